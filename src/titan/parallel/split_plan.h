// How a process group splits into sub-groups, as MPI_Comm_split ranks them (by key, ties by the
// parent rank), computed from every rank's (color, key): the part of a split a group without
// MPI's (NCCL under a torchrun-style start) does on the host before it makes the sub-groups'
// communicators.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace titan::parallel {

struct SplitPlan {
  int rank = 0, size = 0;    // this rank's place in its sub-group
  std::vector<int> leaders;  // per color, ascending: the lowest parent rank holding it
  size_t mine = 0;           // this rank's color's index in `leaders`
};

// `color_key`: 2 values per parent rank, in parent rank order.
SplitPlan plan_split(const std::vector<int32_t>& color_key, int parent_rank);

}  // namespace titan::parallel
