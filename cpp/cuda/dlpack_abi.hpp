#pragma once
// The parts of the DLPack ABI (dlpack.h, v0.8 and later: the unversioned DLManagedTensor that
// `__dlpack__()` returns in a capsule named "dltensor") that the CUDA module reads. Written out
// here rather than vendored: the layout is a stable C ABI, and only these fields are used.

#include <cstdint>

namespace fastmomentum::dlpack {

enum DeviceType : std::int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13 };
enum TypeCode : std::uint8_t { kInt = 0, kFloat = 2, kBfloat = 4 };

struct Device {
    std::int32_t device_type;
    std::int32_t device_id;
};

struct DataType {
    std::uint8_t code;
    std::uint8_t bits;
    std::uint16_t lanes;
};

struct Tensor {
    void* data;
    Device device;
    std::int32_t ndim;
    DataType dtype;
    std::int64_t* shape;
    std::int64_t* strides;  // in elements; null means C-contiguous
    std::uint64_t byte_offset;
};

struct ManagedTensor {
    Tensor dl_tensor;
    void* manager_ctx;
    void (*deleter)(ManagedTensor*);
};

// The capsule name of an unconsumed export. The capsule's own destructor calls the deleter while
// the name is unchanged, so a consumer that only borrows the memory (as this module does, for the
// length of one call) keeps the capsule alive and never renames it.
inline constexpr const char* kCapsuleName = "dltensor";

}  // namespace fastmomentum::dlpack
