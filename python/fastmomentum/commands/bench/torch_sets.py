"""The parameter sets of ``--torch``: the tensor shapes of ResNet-50, BERT-base and a small MLP.

Spelled out here so that the benchmark needs neither torchvision nor transformers; the order is
each model's ``named_parameters()`` order. Sources:

- ResNet-50: ``torchvision.models.resnet50()`` (torchvision/models/resnet.py: ``Bottleneck``
  blocks of 1x1, 3x3, 1x1 convolutions without bias, each followed by a BatchNorm2d; stages of
  [3, 4, 6, 3] blocks of widths 64, 128, 256, 512 and expansion 4; a 1x1 downsample convolution
  and BatchNorm in each stage's first block; ``fc`` 1000 x 2048 with bias): 161 tensors,
  25,557,032 parameters (torchvision's documented 25.6 M).
- BERT-base: ``transformers.BertModel(BertConfig())`` (bert-base-uncased: vocabulary 30522,
  hidden 768, 12 layers, intermediate 3072, 512 positions, 2 token types; Linear weights are
  out x in): 199 tensors, 109,482,240 parameters, the figure ``BertModel.from_pretrained(
  "bert-base-uncased").num_parameters()`` gives (the paper's "110 M").
- MLP: ``nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))`` (MNIST's classic
  784-128-10): 4 tensors, 101,770 parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ParamSet:
    """A model's parameter shapes, the counts they must add up to, and issue 20's speed target
    against torch's fused step on them (fastmomentum's speed-up, >= ``fused_target``)."""

    name: str
    description: str
    shapes: tuple[Shape, ...]
    tensors: int
    parameters: int
    fused_target: float

    def __post_init__(self) -> None:
        # The counts are the check that the shapes are the model's: a wrong stage or a missed
        # bias changes them.
        got = (len(self.shapes), sum(math.prod(s) for s in self.shapes))
        if got != (self.tensors, self.parameters):
            raise AssertionError(f"{self.name}: the shapes give {got[0]} tensors and {got[1]} "
                                 f"parameters, not {self.tensors} and {self.parameters}")


def _bn(c: int) -> list[Shape]:
    return [(c,), (c,)]  # BatchNorm2d / LayerNorm: weight and bias


def resnet50_shapes() -> list[Shape]:
    """torchvision's ResNet-50, in ``named_parameters()`` order."""
    shapes: list[Shape] = [(64, 3, 7, 7), *_bn(64)]  # conv1, bn1
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            out = planes * 4
            shapes += [(planes, inplanes, 1, 1), *_bn(planes),   # conv1, bn1
                       (planes, planes, 3, 3), *_bn(planes),     # conv2, bn2
                       (out, planes, 1, 1), *_bn(out)]           # conv3, bn3
            if block == 0:  # downsample.0 (conv), downsample.1 (bn)
                shapes += [(out, inplanes, 1, 1), *_bn(out)]
            inplanes = out
    return [*shapes, (1000, 2048), (1000,)]  # fc


def bert_base_shapes() -> list[Shape]:
    """Hugging Face's ``BertModel`` with bert-base's configuration, in ``named_parameters()``
    order."""
    hidden, ffn = 768, 3072

    def linear(n_out: int, n_in: int) -> list[Shape]:
        return [(n_out, n_in), (n_out,)]

    shapes: list[Shape] = [(30522, hidden), (512, hidden), (2, hidden), *_bn(hidden)]
    for _ in range(12):
        shapes += [*linear(hidden, hidden), *linear(hidden, hidden), *linear(hidden, hidden),
                   *linear(hidden, hidden), *_bn(hidden),  # query, key, value, output, LN
                   *linear(ffn, hidden), *linear(hidden, ffn), *_bn(hidden)]  # FFN, LN
    return [*shapes, *linear(hidden, hidden)]  # pooler


def mlp_shapes() -> list[Shape]:
    """784-128-10 with biases."""
    return [(128, 784), (128,), (10, 128), (10,)]


#: ``--torch``'s sets; the targets are issue 20's: no slower than torch's fused step on the
#: large sets, >= 2x faster on the small MLP.
SETS: dict[str, ParamSet] = {s.name: s for s in (
    ParamSet("resnet50", "ResNet-50 (torchvision)", tuple(resnet50_shapes()), 161, 25_557_032,
             1.0),
    ParamSet("bert-base", "BERT-base (BertModel)", tuple(bert_base_shapes()), 199, 109_482_240,
             1.0),
    ParamSet("mlp", "MLP 784-128-10", tuple(mlp_shapes()), 4, 101_770, 2.0),
)}
