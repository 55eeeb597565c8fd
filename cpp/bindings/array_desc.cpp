#include "array_desc.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace fastmomentum::bindings {
namespace {

// a * b for a, b >= 0, false when it overflows. Runs for every dimension of every array of every
// step: GCC and Clang check the multiplication's overflow flag; a division does it elsewhere.
bool multiply(std::int64_t a, std::int64_t b, std::int64_t& product) {
#if defined(__GNUC__) || defined(__clang__)
    return !__builtin_mul_overflow(a, b, &product);
#else
    if (b != 0 && a > std::numeric_limits<std::int64_t>::max() / b) return false;
    product = a * b;
    return true;
#endif
}

// Sorts ranges by their start address. An optimizer's step checks hundreds of arrays, whose
// addresses the allocator scatters: a least-significant-digit radix sort over the bytes in which
// the addresses differ (three or four, for arrays a few MiB apart) costs a few passes of O(n)
// where a comparison sort costs O(n log n) unpredictable branches. `spare` is its buffer.
void sort_by_address(std::vector<Range>& ranges, std::vector<Range>& spare) {
    const std::size_t n = ranges.size();
    if (n < 64) {  // a few passes over 256 counters would cost more than sorting
        // Stable, as the radix passes are: ranges at one address stay in list order, so that an
        // error names a pair in the same order every time.
        std::stable_sort(ranges.begin(), ranges.end(),
                         [](const Range& x, const Range& y) { return x.begin < y.begin; });
        return;
    }
    std::uintptr_t differ = 0;  // the bits in which some address differs from the first
    for (const Range& r : ranges) differ |= r.begin ^ ranges[0].begin;
    spare.resize(n);
    for (unsigned shift = 0; shift < 8 * sizeof(std::uintptr_t); shift += 8) {
        if (((differ >> shift) & 0xff) == 0) continue;  // the same byte in every address
        std::size_t start[257] = {};
        for (const Range& r : ranges) ++start[((r.begin >> shift) & 0xff) + 1];
        for (int digit = 0; digit < 256; ++digit) start[digit + 1] += start[digit];
        for (const Range& r : ranges) spare[start[(r.begin >> shift) & 0xff]++] = r;
        ranges.swap(spare);  // stable: equal digits keep the previous passes' order
    }
}

}  // namespace

std::string tuple_str(const std::int64_t* items, int n) {
    std::string s = "(";
    for (int d = 0; d < n; ++d) s += (d ? ", " : "") + std::to_string(items[d]);
    return s + (n == 1 ? ",)" : ")");
}

void count_elements(ArrayDesc& desc, const Where& where) {
    std::int64_t size = 1;
    for (int d = 0; d < desc.ndim; ++d) {
        const std::int64_t extent = desc.shape[d];
        if (extent < 0)
            throw py::value_error(where.str() + " has shape " + tuple_str(desc.shape, desc.ndim) +
                                  ", with a negative extent");
        if (!multiply(size, extent, size))
            throw py::value_error(where.str() + " has shape " + tuple_str(desc.shape, desc.ndim) +
                                  ", whose number of elements overflows a 64-bit count");
    }
    std::int64_t bytes = 0;
    if (!multiply(size, static_cast<std::int64_t>(itemsize(desc.dtype)), bytes))
        throw py::value_error(where.str() + " has shape " + tuple_str(desc.shape, desc.ndim) +
                              ", whose size in bytes overflows a 64-bit count");
    desc.size = size;
    desc.nbytes = static_cast<std::size_t>(bytes);
}

void find_layout(ArrayDesc& a) {
    const auto item = static_cast<std::int64_t>(itemsize(a.dtype));
    if (a.size == 0 || a.strides == nullptr) {
        a.c_order = a.dense = true;
        return;
    }
    // Every product below is of some of the extents, none 0: at most size, times the itemsize at
    // most nbytes, which count_elements checked.
    bool c_order = true;
    std::int64_t expected = item;
    for (int d = a.ndim; d-- > 0;) {
        if (a.shape[d] != 1 && a.strides[d] != expected) {
            c_order = false;
            break;
        }
        expected *= a.shape[d];
    }
    a.c_order = c_order;
    a.dense = true;
    if (c_order) return;
    // Dense in another order: ranked by the magnitude of their strides (ties by dimension), each
    // dimension's stride must be the product of the extents ranked below it, times the itemsize.
    // Two dimensions with one stride, or a stride of 0, fail it. O(ndim^2) with no storage: only
    // arrays that are not C-contiguous come here.
    const auto magnitude = [](std::int64_t s) {
        return s < 0 ? std::uint64_t{0} - static_cast<std::uint64_t>(s) : static_cast<std::uint64_t>(s);
    };
    std::int64_t offset = 0;  // from the first element down to the lowest address, in bytes
    for (int d = 0; d < a.ndim; ++d) {
        if (a.shape[d] == 1) continue;
        const std::uint64_t mine = magnitude(a.strides[d]);
        std::int64_t below = item;
        for (int e = 0; e < a.ndim; ++e) {
            if (e == d || a.shape[e] == 1) continue;
            const std::uint64_t theirs = magnitude(a.strides[e]);
            if (theirs < mine || (theirs == mine && e < d)) below *= a.shape[e];
        }
        if (mine != static_cast<std::uint64_t>(below)) {
            a.dense = false;
            return;
        }
        if (a.strides[d] < 0) offset += a.strides[d] * (a.shape[d] - 1);  // dense: within nbytes
    }
    a.data = static_cast<char*>(a.data) + offset;
}

bool same_strides(const ArrayDesc& a, const ArrayDesc& b) {
    if (a.size == 0) return true;  // and so is b, of a's shape
    // C order fixes the strides of a shape: a C-contiguous and a dense other array differ.
    if (a.c_order || b.c_order) return a.c_order == b.c_order;
    const auto ia = static_cast<std::int64_t>(itemsize(a.dtype));
    const auto ib = static_cast<std::int64_t>(itemsize(b.dtype));
    for (int d = 0; d < a.ndim; ++d)  // dense strides are whole multiples of the itemsize
        if (a.shape[d] != 1 && a.strides[d] / ia != b.strides[d] / ib) return false;
    return true;
}

namespace {

std::vector<std::int64_t> byte_strides(const ArrayDesc& a) {
    std::vector<std::int64_t> s(static_cast<std::size_t>(a.ndim));
    std::int64_t step = static_cast<std::int64_t>(itemsize(a.dtype));
    for (int d = a.ndim; d-- > 0;) {
        s[static_cast<std::size_t>(d)] = a.strides ? a.strides[d] : step;
        step *= a.shape[d];
    }
    return s;
}

}  // namespace

std::string strides_str(const ArrayDesc& a) {
    const std::vector<std::int64_t> s = byte_strides(a);
    return tuple_str(s.data(), a.ndim);
}

void check_layout(const ArrayDesc& a, const Where& where, Access access, const char* hint) {
    if (!a.dense)
        throw py::value_error(
            where.str() + " is not dense (shape " + tuple_str(a.shape, a.ndim) + ", strides " +
            strides_str(a) + "): its elements leave gaps or overlap in memory; fastmomentum never "
            "copies: update an array whose elements fill its memory, in any order (make one once, "
            "e.g. np.ascontiguousarray, then keep using it)" + hint);
    if ((reinterpret_cast<std::uintptr_t>(a.data) & (itemsize(a.dtype) - 1)) != 0)  // a power of 2
        throw py::value_error(where.str() + " is not aligned to its dtype; fastmomentum never "
                              "copies: use an aligned array");
    if (access == Access::write && !a.writeable)
        throw py::value_error(where.str() +
                              " is read-only; it is updated in place and must be writeable");
}

void layout_mismatch(const Checked& other, const Checked& ref) {
    const ArrayDesc& a = other.desc;
    const ArrayDesc& b = ref.desc;
    std::string msg = other.where.str() + " has strides " + strides_str(a) + " but " +
                      ref.where.str() + " has strides " + strides_str(b);
    if (itemsize(a.dtype) != itemsize(b.dtype)) {
        std::vector<std::int64_t> sa = byte_strides(a), sb = byte_strides(b);
        for (auto& s : sa) s /= static_cast<std::int64_t>(itemsize(a.dtype));
        for (auto& s : sb) s /= static_cast<std::int64_t>(itemsize(b.dtype));
        msg += " (in elements " + tuple_str(sa.data(), a.ndim) + " and " +
               tuple_str(sb.data(), b.ndim) + ")";
    }
    throw py::value_error(msg + " (shape " + tuple_str(b.shape, b.ndim) + "); a parameter, its "
                          "gradient and its buffers must share one memory layout, as the update "
                          "runs in memory order: create them with np.empty_like(param) or "
                          "torch.empty_like(param), which keep it (fastmomentum's optimizers "
                          "make their buffers so; for PyTorch parameters use "
                          "fastmomentum.torch.SGD)");
}

void mismatch(const Checked& other, const Checked& ref) {
    if (other.desc.dtype != ref.desc.dtype)
        throw py::type_error(other.where.str() + " has dtype " + dtype_name(other.desc.dtype) +
                             " but " + ref.where.str() + " has dtype " +
                             dtype_name(ref.desc.dtype) + "; they must match");
    const ArrayDesc& a = other.desc;
    const ArrayDesc& b = ref.desc;
    throw py::value_error(other.where.str() + " has shape " + tuple_str(a.shape, a.ndim) +
                          " but " + ref.where.str() + " has shape " + tuple_str(b.shape, b.ndim) +
                          "; they must match");
}

void check_disjoint(const std::vector<Checked>& arrays, std::vector<Range>& scratch,
                    std::vector<Range>& spare) {
    // Sweep the byte ranges in address order. A range overlaps an earlier-starting one iff it
    // starts before the furthest end seen so far; a conflict needs one of the two to be written.
    scratch.clear();
    scratch.reserve(arrays.size());
    for (const Checked& a : arrays)
        if (a.desc.nbytes > 0) {
            const auto begin = reinterpret_cast<std::uintptr_t>(a.desc.data);
            scratch.push_back(Range{begin, begin + a.desc.nbytes, &a});
        }
    const auto by_address = [](const Range& x, const Range& y) { return x.begin < y.begin; };
    // Arrays allocated one after the other are often in order already: then no sort is needed.
    if (!std::is_sorted(scratch.begin(), scratch.end(), by_address)) sort_by_address(scratch, spare);

    const Range* furthest_any = nullptr;      // of all earlier ranges
    const Range* furthest_written = nullptr;  // of earlier written ranges
    for (const Range& r : scratch) {
        const bool written = r.array->access == Access::write;
        const Range* clash = nullptr;
        if (written && furthest_any && furthest_any->end > r.begin) clash = furthest_any;
        else if (furthest_written && furthest_written->end > r.begin) clash = furthest_written;
        if (clash)
            throw py::value_error(clash->array->where.str() + " and " + r.array->where.str() +
                                  " share memory; every parameter and buffer of a call must be "
                                  "distinct memory, and no gradient may overlap one");
        if (!furthest_any || r.end > furthest_any->end) furthest_any = &r;
        if (written && (!furthest_written || r.end > furthest_written->end)) furthest_written = &r;
    }
}

}  // namespace fastmomentum::bindings
