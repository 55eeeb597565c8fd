#include "call.hpp"

#include "protocol.hpp"

namespace fastmomentum::bindings {
namespace {

bool continues(const void* next, const void* start, std::size_t nbytes) {
    return static_cast<const char*>(start) + nbytes == next;
}

}  // namespace

CallArgs parse_call(PyObject* params, PyObject* buffers, PyObject* first_step, const Hyper& hyper,
                    std::size_t first_index) {
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
    call.first_step = FirstStep(first_step);
    call.first_index = first_index;
    return call;
}

CallArgs parse_call(py::handle call) {
    PyObject* t = protocol_tuple(call, field::kCallCount, "Call", "each call");
    const auto at = [&](int f) { return PyTuple_GET_ITEM(t, f); };
    const Hyper hyper = parse_hyper(hyper_args(at(field::hyper)));
    return parse_call(at(field::params), at(field::buffers), at(field::first_step), hyper,
                      count(at(field::first_index), "first_index"));
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

void Update::append(const Checked& param, const Checked& grad, const Checked* buffer,
                    bool first_step) {
    std::vector<TensorRef>& list = param.desc.dtype == Dtype::f32 ? f32 : f64;
    void* buf = buffer ? buffer->desc.data : nullptr;
    if (!list.empty()) {
        TensorRef& last = list.back();
        const std::size_t nbytes = static_cast<std::size_t>(last.size) * itemsize(param.desc.dtype);
        if (last.first_step == first_step && continues(param.desc.data, last.param, nbytes) &&
            continues(grad.desc.data, last.grad, nbytes) &&
            (buf == nullptr ? last.buf == nullptr
                            : last.buf != nullptr && continues(buf, last.buf, nbytes))) {
            last.size += param.desc.size;
            return;
        }
    }
    list.push_back(TensorRef{param.desc.data, grad.desc.data, buf, param.desc.size, first_step});
}

}  // namespace fastmomentum::bindings
