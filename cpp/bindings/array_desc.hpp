#pragma once
// One description of an array, whoever made it (a NumPy array, a CUDA array interface, a DLPack
// tensor), and the ONE set of rules a step's arrays obey, with their messages: a supported dtype,
// dense (any order of strides), aligned, writeable when written, matching shapes and layouts, no
// written memory shared. Both
// modules check every array through these functions, so host and device steps accept and refuse
// exactly the same arrays with the same words. Nothing here runs Python code or converts.

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fastmomentum/storage.hpp"

namespace fastmomentum::bindings {

namespace py = pybind11;

enum class Access : std::uint8_t { read, write };

inline std::size_t itemsize(Dtype d) { return static_cast<std::size_t>(kItemsize[static_cast<int>(d)]); }
// As NumPy names them (bfloat16: ml_dtypes').
inline const char* dtype_name(Dtype d) {
    switch (d) {
        case Dtype::f64: return "float64";
        case Dtype::f32: return "float32";
        case Dtype::bf16: return "bfloat16";
        case Dtype::f16: return "float16";
        case Dtype::i8: break;
    }
    return "int8";
}

// Where an array is in a call, for messages: "grads[3]", "buffers[2].scales"; or, for an array
// of its own (index kNamed), its name: "src.codes".
struct Where {
    static constexpr std::size_t kNamed = static_cast<std::size_t>(-1);
    const char* list;   // "params", "grads", "buffers", "velocities", "compensations", or a name
    std::size_t index;  // as the caller numbers it, or kNamed
    const char* part = "";  // within an 8-bit buffer: ".codes" or ".scales"
    std::string str() const {
        return std::string(list) + (index == kNamed ? "" : "[" + std::to_string(index) + "]") +
               part;
    }
};

// An array as the rules see it. `shape` and `strides` point into memory the reader keeps alive
// for the step (the NumPy array's own fields, or the reader's copy of an interface's). A reader
// sets every field (none has a default: a step fills hundreds, and zeroing each first showed).
//
// The update is element-wise, so a dense array (its elements fill exactly nbytes with no gaps and
// no overlaps, whatever the order of its strides) is updated in memory order, from `data`, the
// lowest address of its memory: as long as every array of a parameter (gradient, buffer, codes,
// compensation) has its layout, the same strides in elements, memory order pairs their elements
// right. A reader fills `data` with the first element's address, then the layout fields: a
// C-contiguous array directly (the usual case, no other cost), any other by find_layout.
struct ArrayDesc {
    void* data;  // after find_layout: the lowest address (not the first element's if a stride < 0)
    int ndim;
    const std::int64_t* shape;
    const std::int64_t* strides;  // in bytes; null: C-contiguous by declaration
    std::int64_t size;            // elements
    std::size_t nbytes;
    // Not beside ndim: the readers store the two separately, and a comparison of both loaded as
    // one word would wait for both stores (a store-forwarding stall on every check_matches).
    Dtype dtype;
    bool c_order;  // C-contiguous (NumPy's rules: extents of 1 have any stride; empty arrays are)
    bool dense;    // no gaps, no overlaps, in any order (c_order implies it)
    bool writeable;
};

// A checked array of a step: its description, where it is, and a strong reference to what owns
// its memory (the array, or its DLPack export), so that nothing can free it before the kernels
// have run.
struct Checked {
    Checked(const Where& at, Access how) : access(how), where(at) {}  // desc: the reader's to fill
    ArrayDesc desc;
    Access access;
    Where where;
    py::object owner;
};

// A checked array's memory, for check_disjoint.
struct Range {
    std::uintptr_t begin, end;
    const Checked* array;
};

// Formats like a Python tuple: "()", "(3,)", "(3, 4)".
std::string tuple_str(const std::int64_t* items, int n);

// The elements and bytes of `shape` (each extent >= 0), with every product checked: an extent
// that is negative, or a count that overflows, raises ValueError naming `where`.
void count_elements(ArrayDesc& desc, const Where& where);

// Sets a.c_order and a.dense from a's shape, strides, size and dtype, and moves a.data (the first
// element's address) to the lowest address of the array's memory when it is dense. Extents of 1
// may have any stride (NumPy and PyTorch set them freely); an empty array is C-contiguous.
void find_layout(ArrayDesc& a);

// Whether `a` and `b`, two dense arrays of one shape, lay their elements out alike: the same
// strides in elements wherever the extent is not 1 (a float32 gradient of a bfloat16 parameter
// has twice its byte strides). Empty arrays always do.
bool same_strides(const ArrayDesc& a, const ArrayDesc& b);
inline bool same_layout(const ArrayDesc& a, const ArrayDesc& b) {
    return (a.c_order && b.c_order) || same_strides(a, b);
}

// The strides of `a` in bytes, for messages (computed when a reader declared it C-contiguous
// without strides).
std::string strides_str(const ArrayDesc& a);

// The rules of one array: layout (dense), alignment to its dtype, and writeable when
// `access` is write. The dtype is the reader's to check (only it can name a foreign dtype).
// `hint` ends the message of an array that is not dense (a reader's advice for its kind).
void check_layout(const ArrayDesc& a, const Where& where, Access access, const char* hint = "");

// The errors of check_matches and check_same_layout.
[[noreturn]] void mismatch(const Checked& other, const Checked& ref);
[[noreturn]] void layout_mismatch(const Checked& other, const Checked& ref);

// `other`, of the shape of `ref`, must have its layout (same_layout). Runs for every gradient and
// buffer of every step: inline, with the message built elsewhere.
inline void check_same_layout(const Checked& other, const Checked& ref) {
    if (!same_layout(other.desc, ref.desc)) layout_mismatch(other, ref);
}

// `other` must have the dtype, shape and layout of `ref`.
inline void check_matches(const Checked& other, const Checked& ref) {
    const ArrayDesc& a = other.desc;
    const ArrayDesc& b = ref.desc;
    bool same = a.dtype == b.dtype && a.ndim == b.ndim;
    for (int d = 0; same && d < a.ndim; ++d) same = a.shape[d] == b.shape[d];
    if (!same) mismatch(other, ref);
    check_same_layout(other, ref);
}

// No array that is written may share memory with any other array (two reads may). Sorts the
// ranges of `arrays` by address in `scratch`, with `spare` as the sort's buffer.
void check_disjoint(const std::vector<Checked>& arrays, std::vector<Range>& scratch,
                    std::vector<Range>& spare);

}  // namespace fastmomentum::bindings
