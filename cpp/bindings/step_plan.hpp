#pragma once
// The optimizer's fast path: a StepPlan holds an optimizer's parameters and momentum buffers
// checked once (types, layout, and that no two share memory), so that a step only re-checks what
// can change cheaply (each array's fields, and that the groups and state still hold the same
// objects) and fully checks the new gradients. It is a cache: when anything it relies on has
// changed, step() says so and the optimizer takes its general path and makes a new plan.

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "arrays.hpp"
#include "fastmomentum/hyper.hpp"

namespace fastmomentum::bindings {

class StepPlan {
public:
    // param_groups: the optimizer's group dicts, each with a "params" list. states: per group,
    // per parameter, its state dict or None. key: the state key of the buffer ("momentum_buffer").
    StepPlan(py::handle param_groups, py::handle states, py::handle style, py::handle key);

    // One update. grads: one array or None per parameter, over all groups; hypers: per group,
    // the tuple of sgd_step's nine hyper-parameters; then the guard, as sgd_steps takes it.
    // Returns sgd_steps' (applied, norm, threads), or None (nothing done) when the plan no longer
    // describes the optimizer. Everything is checked in the order sgd_steps checks the
    // optimizer's full-path calls, so an invalid input raises the same error, with nothing
    // modified.
    py::object step(py::handle param_groups, py::handle grads, py::handle hypers,
                    py::handle check_finite, py::handle max_norm, py::handle loss_scale);

private:
    struct Param {
        py::object array;   // the parameter
        py::object state;   // its state dict, or None
        py::object buffer;  // state[key] when the plan was made, or None
        void* data;
        std::size_t nbytes;
    };
    struct Group {
        py::object params;  // the group's "params" list
        std::size_t first, count;
    };
    // A parameter's or buffer's memory, for checking gradients against it.
    struct Range {
        std::uintptr_t begin, end;
        std::size_t param;
        bool is_buffer;
    };

    bool same_groups(py::handle param_groups) const;
    // The first range that overlaps [begin, end) and is written by this step (`written[2*param +
    // is_buffer]`), or null.
    const Range* written_overlap(std::uintptr_t begin, std::uintptr_t end,
                                 const std::vector<char>& written) const;

    Style style_;
    py::object key_;
    std::vector<Group> groups_;
    std::vector<Param> params_;
    std::vector<Range> written_;  // sorted by address, disjoint
};

}  // namespace fastmomentum::bindings
