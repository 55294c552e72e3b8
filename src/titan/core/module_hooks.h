// Where a model hands control to what wraps it, unit by unit (FSDP gathers parameters before a
// unit runs and frees them, or reduces their gradients, after). The model only says where its
// units start and end; it knows nothing of what happens there.
#pragma once

namespace titan {

class ModuleHooks {
 public:
  virtual ~ModuleHooks() = default;
  virtual void before_forward(int unit) = 0;
  // `backward_follows`: false in forward-only passes (validation, logits).
  virtual void after_forward(int unit, bool backward_follows) = 0;
  virtual void before_backward(int unit) = 0;
  virtual void after_backward(int unit) = 0;
};

}  // namespace titan
