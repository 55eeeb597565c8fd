"""The ``python -m fastmomentum demo`` job: a small NumPy MLP trained with ``fm.SGD``.

- :mod:`.data`: three interleaved spirals, generated;
- :mod:`.mlp`: the network, its hand-written backprop and a finite-difference check;
- :mod:`.train`: one training run per optimizer (plain SGD, momentum, Nesterov) under one schedule;
- :mod:`.report`: the table and the plot; :mod:`.cli`: the command.
"""
