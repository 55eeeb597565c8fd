#pragma once
// The step protocol between Python and C++: the tuples a step's arguments travel in, and their
// fields by name. Each list below is the ONE definition of its tuple's layout: C++ reads a field
// as `field::lr`, _core exports the names (HYPER_FIELDS, CALL_FIELDS, GUARD_FIELDS), and
// fastmomentum/_protocol.py checks its NamedTuples against them at import.
//
//   Hyper: a call's hyper-parameters, as the user gave them (the parser converts and checks them),
//          and how parameters narrower than float32 round: rounding ("nearest" or "stochastic")
//          with the seed and step that key stochastic rounding's random numbers.
//   Call:  one parameter group: its params, buffers (or None), first_step (one bool or one per
//          array), its Hyper, first_index, the position of params[0] among all the step's
//          parameters (its gradient is grads[first_index]; errors number arrays from it), and
//          compensations: None, or one Kahan compensation array (or None) per parameter.
//   Guard: the step's guards: nonfinite ("ignore", "skip" or "raise"), max_norm (None: no
//          clipping), loss_scale, stats: None to measure the gradients, or the caller's own
//          (all_finite, sum_squares) of them (e.g. over every rank's shard), used instead;
//          clip_rule: max_norm's formula, "torch" (clip_grad_norm_) or "keras"
//          (global_clipnorm); clip_value: None, or Keras' clipvalue.

#define FM_HYPER_FIELDS(X) \
    X(style) X(lr) X(momentum) X(dampening) X(nesterov) X(weight_decay) X(weight_decay_mode) \
    X(schedule_multiplier) X(maximize) X(rounding) X(seed) X(step)
#define FM_CALL_FIELDS(X) \
    X(params) X(buffers) X(first_step) X(hyper) X(first_index) X(compensations)
#define FM_GUARD_FIELDS(X) \
    X(nonfinite) X(max_norm) X(loss_scale) X(stats) X(clip_rule) X(clip_value)

namespace fastmomentum::bindings {
namespace field {

#define FM_FIELD_ENUMERATOR(name) name,
enum HyperField : int { FM_HYPER_FIELDS(FM_FIELD_ENUMERATOR) };
enum CallField : int { FM_CALL_FIELDS(FM_FIELD_ENUMERATOR) };
enum GuardField : int { FM_GUARD_FIELDS(FM_FIELD_ENUMERATOR) };
#undef FM_FIELD_ENUMERATOR

#define FM_FIELD_NAME(name) #name,
inline constexpr const char* kHyperNames[] = {FM_HYPER_FIELDS(FM_FIELD_NAME)};
inline constexpr const char* kCallNames[] = {FM_CALL_FIELDS(FM_FIELD_NAME)};
inline constexpr const char* kGuardNames[] = {FM_GUARD_FIELDS(FM_FIELD_NAME)};
#undef FM_FIELD_NAME

inline constexpr int kHyperCount = sizeof(kHyperNames) / sizeof(kHyperNames[0]);
inline constexpr int kCallCount = sizeof(kCallNames) / sizeof(kCallNames[0]);
inline constexpr int kGuardCount = sizeof(kGuardNames) / sizeof(kGuardNames[0]);

}  // namespace field
}  // namespace fastmomentum::bindings
