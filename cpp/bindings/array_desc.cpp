#include "array_desc.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>

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

void check_layout(const ArrayDesc& a, const Where& where, Access access) {
    if (!a.contiguous)
        throw py::value_error(
            where.str() + " is not C-contiguous (shape " + tuple_str(a.shape, a.ndim) +
            ", strides " + (a.strides ? tuple_str(a.strides, a.ndim) : std::string("unknown")) +
            "); fastmomentum never copies: update a contiguous array (make it contiguous once, "
            "e.g. np.ascontiguousarray, then keep using it)");
    if ((reinterpret_cast<std::uintptr_t>(a.data) & (itemsize(a.dtype) - 1)) != 0)  // a power of 2
        throw py::value_error(where.str() + " is not aligned to its dtype; fastmomentum never "
                              "copies: use an aligned array");
    if (access == Access::write && !a.writeable)
        throw py::value_error(where.str() +
                              " is read-only; it is updated in place and must be writeable");
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
