#pragma once
// Device arrays for the CUDA module: any object with `__cuda_array_interface__` (v2/v3: CuPy,
// Numba, PyTorch without grad) or, failing that, `__dlpack__` on a CUDA device (PyTorch, JAX, ...).
//
// An interface is Python code (a property, a method), so a device step reads every array's
// interface in phase 1 (call.hpp), before any array is checked: DeviceReader::collect copies what
// each one describes, and keeps the object (or its DLPack export) alive. Phase 2 then checks those
// copies with the same rules and messages as NumPy arrays (array_desc.hpp), reading C++ fields
// only. Only check_devices calls CUDA (where the memory lives), so every other rule is checked, and
// testable, without a GPU.

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "../bindings/args.hpp"
#include "../bindings/array_desc.hpp"

namespace fastmomentum::cuda {

namespace py = pybind11;
using bindings::Access;
using bindings::Checked;
using bindings::List;
using bindings::Where;

// A stream in the __cuda_array_interface__ convention: 1 is the legacy default stream, 2 the
// per-thread default stream, any other value a cudaStream_t (0 is not allowed: it is ambiguous).
using StreamId = std::intptr_t;

class DeviceReader {
public:
    // `stream`: the stream the step will run on, passed to `__dlpack__` so that the producer
    // orders its pending work before it.
    explicit DeviceReader(StreamId stream) : stream_(stream) {}

    // Phase 1: reads the interface of every array of `list` (None entries are left for phase 2),
    // named `name` in messages and numbered from `first`; with `pairs` (a buffers list), also
    // both arrays of each 2-tuple, an 8-bit buffer (codes, scales). Freezes the list first, so
    // that the interfaces' code cannot change which objects phase 2 sees.
    void collect(List& list, const char* name, std::size_t first = 0, bool pairs = false);

    // Phase 2: `obj`'s description as collected, after the rules of check_layout. C++ only.
    void operator()(Checked& out, PyObject* obj, Access access) const;

    // The producers' streams that the arrays' interfaces named (other than the step's own).
    const std::vector<StreamId>& producer_streams() const { return producers_; }

private:
    void collect_one(PyObject* obj, const Where& at);

    struct Info {
        bindings::ArrayDesc desc;
        std::vector<std::int64_t> shape, strides;
        bool readonly;
        py::object owner;  // the array, or its DLPack export: keeps the memory alive
    };
    StreamId stream_;
    std::unordered_map<PyObject*, Info> infos_;
    std::vector<py::object> held_;  // every collected object, alive until the step ends
    std::vector<StreamId> producers_;
};

// A Python int (not a bool) as an int64, by name (`what`): a value out of range is an error,
// not a wrap-around.
std::int64_t int64_of(PyObject* obj, const std::string& what);

// Every non-empty array must be memory of one CUDA device (device or managed memory, not host
// memory); returns that device (0 when every array is empty).
int check_devices(const std::vector<Checked>& arrays);

}  // namespace fastmomentum::cuda
