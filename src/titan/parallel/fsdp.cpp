#include "titan/parallel/fsdp.h"

#include "titan/core/error.h"

namespace titan::parallel {

FullyShardedDataParallel::FullyShardedDataParallel(UnitStore& store, ReshardPolicy policy, bool prefetch)
    : store_(store), policy_(policy), prefetch_(prefetch) {}

bool FullyShardedDataParallel::frees_after_forward(int unit) const {
  if (unit == 0) return policy_.reshard_root;
  return unit + 1 == store_.units() ? policy_.reshard_last_block : policy_.reshard_blocks;
}

void FullyShardedDataParallel::before_forward(int unit) {
  store_.use(unit);
  // The next unit's weights arrive while this one computes (the root's: the first block's).
  if (prefetch_ && unit + 1 < store_.units()) store_.gather(unit + 1);
}

void FullyShardedDataParallel::after_forward(int unit, bool backward_follows) {
  if (!backward_follows || frees_after_forward(unit)) store_.reshard(unit);
}

void FullyShardedDataParallel::before_backward(int unit) {
  store_.use(unit);
  // Backward walks the blocks down from the last, the root's (the classifier) first: the block
  // that comes next arrives while this unit's backward runs.
  const int next = unit == 0 ? store_.units() - 1 : unit - 1;
  if (prefetch_ && next >= 1) store_.gather(next);
  store_.begin_gradients(unit);
}

void FullyShardedDataParallel::after_backward(int unit) {
  store_.reduce_gradients(unit);
  if (unit == 0) store_.end_backward();  // the root's backward (the embedding) is the pass's last
}

}  // namespace titan::parallel
