#include "titan/parallel/split_plan.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "titan/core/error.h"

namespace titan::parallel {

SplitPlan plan_split(const std::vector<int32_t>& color_key, int parent_rank) {
  const int world = static_cast<int>(color_key.size() / 2);
  TITAN_CHECK(color_key.size() % 2 == 0 && parent_rank >= 0 && parent_rank < world, "a split of ", color_key.size(),
              " values at parent rank ", parent_rank);
  auto color = [&](int r) { return color_key[static_cast<size_t>(2 * r)]; };
  auto key = [&](int r) { return color_key[static_cast<size_t>(2 * r + 1)]; };
  std::map<int32_t, int> leader;  // ordered by color
  for (int r = 0; r < world; ++r) leader.emplace(color(r), r);  // the first (lowest) rank stays
  std::vector<int> members;
  for (int r = 0; r < world; ++r)
    if (color(r) == color(parent_rank)) members.push_back(r);
  std::sort(members.begin(), members.end(),
            [&](int a, int b) { return std::make_tuple(key(a), a) < std::make_tuple(key(b), b); });
  SplitPlan plan;
  plan.size = static_cast<int>(members.size());
  plan.rank = static_cast<int>(std::find(members.begin(), members.end(), parent_rank) - members.begin());
  for (const auto& [c, r] : leader) {
    if (c == color(parent_rank)) plan.mine = plan.leaders.size();
    plan.leaders.push_back(r);
  }
  return plan;
}

}  // namespace titan::parallel
