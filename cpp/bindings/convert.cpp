// _core.convert: one array's values into another's storage, by the kernels' own conversions
// (rules.hpp): what an optimizer does when a state dict's buffers are of another storage kind
// than its own (a float32 state dict loaded with state_dtype="int8", and back). Checked first,
// as a step checks its arrays; nothing is written unless every check passes.

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "args.hpp"
#include "call.hpp"
#include "host_step.hpp"
#include "register.hpp"

// The conversions run on the host, in this object's copy of the rules (rules::host).
#define FM_ISA host
#include "fastmomentum/rules.hpp"

namespace fastmomentum::bindings {
namespace {

// One side of a conversion: an array, or an 8-bit buffer's codes and scales.
struct Side {
    const Checked* values;
    const Checked* scales;  // null unless 8-bit
};

Side read_side(Step& step, PyObject* obj, const char* name, Access access) {
    HostReader read;
    if (!PyTuple_Check(obj)) {
        const Checked& a = step.arrays[step.add(read, obj, Where{name, Where::kNamed}, access)];
        if (a.desc.dtype == Dtype::f64 || a.desc.dtype == Dtype::i8)
            throw py::type_error(a.where.str() + " has dtype " + dtype_name(a.desc.dtype) +
                                 "; convert takes float32, bfloat16 and float16 arrays and 8-bit "
                                 "buffers (float64 converts with NumPy's astype)");
        return Side{&a, nullptr};
    }
    if (PyTuple_GET_SIZE(obj) != 2) quantized_buffer_size_error(Where{name, Where::kNamed}, obj);
    const std::size_t c = step.add(read, PyTuple_GET_ITEM(obj, 0), Where{name, Where::kNamed, ".codes"}, access);
    const std::size_t s = step.add(read, PyTuple_GET_ITEM(obj, 1), Where{name, Where::kNamed, ".scales"}, access);
    return Side{&step.arrays[c], &step.arrays[s]};
}

// Block [off, off + n) of `side` as float32.
void widen_block(const Side& side, std::int64_t off, std::int64_t n, float* out) {
    const void* data = side.values->desc.data;
    for (std::int64_t i = 0; i < n; ++i) {
        switch (side.values->desc.dtype) {
            case Dtype::bf16: out[i] = rules::widen(static_cast<const bf16*>(data)[off + i]); break;
            case Dtype::f16: out[i] = rules::widen(static_cast<const f16*>(data)[off + i]); break;
            case Dtype::i8:
                out[i] = rules::dequantized(static_cast<const std::int8_t*>(data)[off + i],
                                            static_cast<const float*>(side.scales->desc.data)[off / kQuantBlock]);
                break;
            default: out[i] = static_cast<const float*>(data)[off + i]; break;
        }
    }
}

// float32 values into block [off, off + n) of `side`, to nearest (8-bit: the block's scale and
// codes, as a step stores them).
void narrow_block(const Side& side, std::int64_t off, std::int64_t n, const float* in) {
    void* data = side.values->desc.data;
    if (side.values->desc.dtype == Dtype::i8) {
        static_cast<float*>(side.scales->desc.data)[off / kQuantBlock] =
            rules::quantize_block(in, n, static_cast<std::int8_t*>(data) + off);
        return;
    }
    for (std::int64_t i = 0; i < n; ++i) {
        switch (side.values->desc.dtype) {
            case Dtype::bf16: rules::narrow(in[i], static_cast<bf16*>(data)[off + i]); break;
            case Dtype::f16: rules::narrow(in[i], static_cast<f16*>(data)[off + i]); break;
            default: static_cast<float*>(data)[off + i] = in[i]; break;
        }
    }
}

void convert(py::handle src_obj, py::handle dst_obj, const std::string& src_name) {
    resolve_bfloat16();  // phase 1
    Step step;
    step.arrays.reserve(4);
    const Side src = read_side(step, src_obj.ptr(), src_name.c_str(), Access::read);
    const Side dst = read_side(step, dst_obj.ptr(), "dst", Access::write);
    for (const Side* side : {&src, &dst})
        if (side->scales) {
            const Checked& codes = *side->values;
            const Checked& scales = *side->scales;
            if (codes.desc.dtype != Dtype::i8)
                throw py::type_error(codes.where.str() + " has dtype " +
                                     dtype_name(codes.desc.dtype) +
                                     "; an 8-bit buffer's codes are int8");
            if (scales.desc.dtype != Dtype::f32)
                throw py::type_error(scales.where.str() + " has dtype " +
                                     dtype_name(scales.desc.dtype) +
                                     "; an 8-bit buffer's scales are float32");
            const std::int64_t blocks = (codes.desc.size + kQuantBlock - 1) / kQuantBlock;
            if (scales.desc.ndim != 1 || scales.desc.shape[0] != blocks)
                throw py::value_error(scales.where.str() + " must have shape (" +
                                      std::to_string(blocks) + ",), one scale per block of " +
                                      std::to_string(kQuantBlock) + " codes");
            check_scales_order(scales);
        } else if (side->values->desc.dtype == Dtype::i8) {
            throw py::type_error(side->values->where.str() + " has dtype int8: an 8-bit buffer is "
                                 "a (codes, scales) fastmomentum.QuantizedBuffer");
        }
    if (src.values->desc.size != dst.values->desc.size)
        throw py::value_error(src_name + " has " + std::to_string(src.values->desc.size) +
                              " elements but dst has " + std::to_string(dst.values->desc.size));
    // Converted in memory order: element for element only if both lay them out alike. Arrays in
    // C order may differ in shape (a flat state of a shaped parameter); others must match.
    const ArrayDesc& s = src.values->desc;
    const ArrayDesc& d = dst.values->desc;
    if (!(s.c_order && d.c_order)) {
        bool same = s.ndim == d.ndim;
        for (int k = 0; same && k < s.ndim; ++k) same = s.shape[k] == d.shape[k];
        if (!same || !same_strides(s, d))
            throw py::value_error(src.values->where.str() + " has shape " +
                                  tuple_str(s.shape, s.ndim) + " and strides " + strides_str(s) +
                                  " but " + dst.values->where.str() + " has shape " +
                                  tuple_str(d.shape, d.ndim) + " and strides " + strides_str(d) +
                                  "; an array that is not C-contiguous converts into one of its "
                                  "shape and layout (the same strides in elements)");
    }
    step.check_disjoint();
    const std::int64_t size = src.values->desc.size;
    float block[kQuantBlock];
    for (std::int64_t off = 0; off < size; off += kQuantBlock) {
        const std::int64_t n = std::min(kQuantBlock, size - off);
        widen_block(src, off, n, block);
        narrow_block(dst, off, n, block);
    }
}

}  // namespace

void register_convert(py::module_& m) {
    m.def("convert", &convert, py::arg("src"), py::arg("dst"), py::arg("src_name") = "src",
          "Write src's values into dst's storage with the kernels' conversions (float32, "
          "bfloat16 and float16 arrays and (codes, scales) 8-bit buffers; nearest rounding). Both "
          "are checked first (sizes, dtypes, layout, dst writeable, no shared memory); nothing is "
          "written on an error. Errors call src src_name (e.g. where a state dict holds it).");
}

}  // namespace fastmomentum::bindings
