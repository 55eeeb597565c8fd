#include "call.hpp"

#include "protocol.hpp"

namespace fastmomentum::bindings {
namespace {

bool continues(const void* next, const void* start, std::size_t nbytes) {
    return static_cast<const char*>(start) + nbytes == next;
}

}  // namespace

CallArgs parse_call(PyObject* params, PyObject* buffers, PyObject* compensations,
                    PyObject* first_step, const Hyper& hyper, std::size_t first_index) {
    resolve_bfloat16();
    CallArgs call;
    call.hyper = hyper;
    call.params = List(params, "params");
    call.has_buffers = buffers != Py_None;
    const char* b_name = buffers_name(hyper.style);
    if (call.has_buffers) call.buffers = List(buffers, b_name);
    else if (hyper.momentum != 0.0)
        throw py::value_error(std::string(b_name) + " is required when " +
                              momentum_name(hyper.style) +
                              " != 0 (one array per parameter, e.g. np.zeros_like(p))");
    call.has_compensations = compensations != Py_None;
    if (call.has_compensations) call.compensations = List(compensations, "compensations");
    call.first_step = FirstStep(first_step);
    call.first_index = first_index;
    return call;
}

CallArgs parse_call(py::handle call) {
    PyObject* t = protocol_tuple(call, field::kCallCount, "Call", "each call");
    const auto at = [&](int f) { return PyTuple_GET_ITEM(t, f); };
    const Hyper hyper = parse_hyper(hyper_args(at(field::hyper)));
    return parse_call(at(field::params), at(field::buffers), at(field::compensations),
                      at(field::first_step), hyper, count(at(field::first_index), "first_index"));
}

// Phase 1 of a step's calls. Each call tuple is held while it is parsed: its parse may run Python
// code that drops it from `calls`.
std::vector<CallArgs> parse_calls(py::handle calls_obj) {
    const List calls(calls_obj, "calls");
    std::vector<CallArgs> parsed;
    parsed.reserve(calls.size());
    for (std::size_t i = 0; i < calls.size(); ++i) {
        const auto call = py::reinterpret_borrow<py::object>(calls[i]);
        parsed.push_back(parse_call(call));
    }
    return parsed;
}

namespace {

bool is_16bit(Dtype d) { return d == Dtype::bf16 || d == Dtype::f16; }

[[noreturn]] void dtype_error(const Checked& a, const std::string& expected) {
    throw py::type_error(a.where.str() + " has dtype " + dtype_name(a.desc.dtype) + "; " + expected);
}

void check_shape(const Checked& a, const Checked& ref) {
    bool same = a.desc.ndim == ref.desc.ndim;
    for (int d = 0; same && d < a.desc.ndim; ++d) same = a.desc.shape[d] == ref.desc.shape[d];
    if (!same)
        throw py::value_error(a.where.str() + " has shape " + tuple_str(a.desc.shape, a.desc.ndim) +
                              " but " + ref.where.str() + " has shape " +
                              tuple_str(ref.desc.shape, ref.desc.ndim) + "; they must match");
}

// A parameter's gradient, buffer (an 8-bit one's codes) and compensation must have its layout:
// the kernels pair their elements in memory order. Apart from kind_of: the usual step, every array
// C-contiguous, tests one flag per array there and never comes here (measured: checking each
// array in turn cost about 1 µs per 200 arrays).
void check_layouts(const Checked& p, const Checked& g, const Checked* buffer,
                   const Checked* compensation) {
    check_same_layout(g, p);
    if (buffer) check_same_layout(*buffer, p);
    if (compensation) check_same_layout(*compensation, p);
}

// An 8-bit buffer's codes (int8, the parameter's shape) and scales (float32, one per block).
void check_quantized(const Checked& codes, const Checked& scales, const Checked& p) {
    if (p.desc.dtype == Dtype::f64)
        throw py::type_error(codes.where.str() + ": a float64 parameter's buffer is a float64 "
                             "array; 8-bit buffers are for float32, bfloat16 and float16 ones");
    if (codes.desc.dtype != Dtype::i8) dtype_error(codes, "an 8-bit buffer's codes are int8");
    // Its blocks are runs of kQuantBlock elements in index (C) order: a step runs in memory
    // order, so it keeps them only for C-contiguous arrays; and codes in another order, saved as
    // a plain array (np.save writes C or Fortran order), would come back with their blocks
    // scrambled against the scales. Other layouts have 16- and 32-bit buffers.
    if (!p.desc.c_order)
        throw py::value_error(codes.where.str() + ": an 8-bit buffer is for a C-contiguous "
                              "parameter, but " + p.where.str() + " has shape " +
                              tuple_str(p.desc.shape, p.desc.ndim) + " and strides " +
                              strides_str(p.desc) + " (its blocks of " +
                              std::to_string(kQuantBlock) + " are in C order); give it a "
                              "float32, bfloat16 or float16 buffer (state_dtype), or keep the "
                              "parameter C-contiguous");
    check_shape(codes, p);
    if (scales.desc.dtype != Dtype::f32) dtype_error(scales, "an 8-bit buffer's scales are float32");
    check_scales_order(scales);
    const std::int64_t blocks = (p.desc.size + kQuantBlock - 1) / kQuantBlock;
    if (scales.desc.ndim != 1 || scales.desc.shape[0] != blocks)
        throw py::value_error(scales.where.str() + " has shape " +
                              tuple_str(scales.desc.shape, scales.desc.ndim) + " but " +
                              p.where.str() + " has " + std::to_string(p.desc.size) +
                              " elements: one scale per block of " + std::to_string(kQuantBlock) +
                              ", shape (" + std::to_string(blocks) + ",)");
}

}  // namespace

void check_scales_order(const Checked& scales) {
    // Dense in reverse is not enough: scales[k] is block k's, block k the k-th in memory order.
    if (!scales.desc.c_order)
        throw py::value_error(scales.where.str() + " is not C-contiguous (strides " +
                              strides_str(scales.desc) + "); an 8-bit buffer's scales are one "
                              "float32 per block of its codes in memory order, in that order: "
                              "use the scales of fastmomentum.QuantizedBuffer.zeros_like");
}

void quantized_buffer_size_error(const Where& where, PyObject* tuple) {
    throw py::type_error(where.str() + " is a tuple of " + std::to_string(PyTuple_GET_SIZE(tuple)) +
                         " items; an 8-bit buffer is a fastmomentum.QuantizedBuffer (codes, "
                         "scales), e.g. fastmomentum.QuantizedBuffer.zeros_like(p)");
}

Kind kind_of(const Checked& p, const Checked& g, const Checked* buffer, const Checked* scales,
             const Checked* compensation, const Hyper& hyper) {
    const Dtype pd = p.desc.dtype;
    if (pd == Dtype::i8) dtype_error(p, "expected float32, float64, bfloat16 or float16");
    if (g.desc.dtype != pd && !(is_16bit(pd) && g.desc.dtype == Dtype::f32)) {
        if (g.desc.dtype == Dtype::i8 || !is_16bit(pd)) mismatch(g, p);
        dtype_error(g, std::string("a ") + dtype_name(pd) + " parameter's gradient is " +
                           dtype_name(pd) + " or float32 (" + p.where.str() + ")");
    }
    check_shape(g, p);
    Kind kind{pd, g.desc.dtype, pd, Rounding::nearest};
    if (buffer && scales) {
        check_quantized(*buffer, *scales, p);
        kind.buf = Dtype::i8;
    } else if (buffer) {
        const Dtype bd = buffer->desc.dtype;
        if (pd == Dtype::f64 && bd != Dtype::f64) mismatch(*buffer, p);
        if (pd != Dtype::f64 && (bd == Dtype::f64 || bd == Dtype::i8)) {
            dtype_error(*buffer, std::string("a ") + dtype_name(pd) + " parameter's buffer is a "
                                 "float32, bfloat16 or float16 array, or an 8-bit "
                                 "fastmomentum.QuantizedBuffer (" + p.where.str() + ")");
        }
        check_shape(*buffer, p);
        kind.buf = bd;
    }
    if (compensation) {
        if (!is_16bit(pd))
            throw py::value_error(compensation->where.str() + " is given but " + p.where.str() +
                                  " is " + dtype_name(pd) + ": only bfloat16 and float16 "
                                  "parameters are compensated (pass None for it)");
        if (hyper.rounding == Rounding::stochastic)
            throw py::value_error(compensation->where.str() + " is given with "
                                  "rounding='stochastic': a parameter is either compensated or "
                                  "stochastically rounded");
        check_matches(*compensation, p);  // dtype and shape (and layout)
        kind.rounding = Rounding::kahan;
    } else if (is_16bit(pd)) {
        kind.rounding = hyper.rounding;
    }
    if (!(p.desc.c_order && g.desc.c_order && (!buffer || buffer->desc.c_order)))
        check_layouts(p, g, buffer, compensation);
    return kind;
}

void Update::append(const Kind& kind, const TensorArrays& arrays, bool first_step,
                    std::size_t stream) {
    const ArrayDesc& param = arrays.param->desc;
    const ArrayDesc& grad = arrays.grad->desc;
    void* buf = arrays.buffer ? arrays.buffer->desc.data : nullptr;
    const bool exact = kind.grad == kind.param && (arrays.buffer == nullptr || kind.buf == kind.param) &&
                       (kind.param == Dtype::f32 || kind.param == Dtype::f64);
    if (!exact) {
        TensorRef t{param.data, grad.data, buf, param.size, first_step};
        if (arrays.scales) t.scales = static_cast<float*>(arrays.scales->desc.data);
        if (arrays.compensation) t.comp = arrays.compensation->desc.data;
        t.stream = stream;
        Kind listed = kind;
        if (arrays.buffer == nullptr) listed.buf = kind.param;  // no buffer: its kind is moot
        for (LowpList& l : lowp)
            if (l.kind.param == listed.param && l.kind.grad == listed.grad &&
                l.kind.buf == listed.buf && l.kind.rounding == listed.rounding) {
                l.tensors.push_back(t);
                return;
            }
        lowp.push_back(LowpList{listed, {t}});
        return;
    }
    std::vector<TensorRef>& list = param.dtype == Dtype::f32 ? f32 : f64;
    if (!list.empty()) {
        TensorRef& last = list.back();
        const std::size_t nbytes = static_cast<std::size_t>(last.size) * itemsize(param.dtype);
        if (last.first_step == first_step && continues(param.data, last.param, nbytes) &&
            continues(grad.data, last.grad, nbytes) &&
            (buf == nullptr ? last.buf == nullptr
                            : last.buf != nullptr && continues(buf, last.buf, nbytes))) {
            last.size += param.size;
            return;
        }
    }
    list.push_back(TensorRef{param.data, grad.data, buf, param.size, first_step});
}

}  // namespace fastmomentum::bindings
