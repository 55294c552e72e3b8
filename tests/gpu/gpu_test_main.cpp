// main() of the gpu tests. GTEST_SKIP exits 0, which ctest counted as a pass: on a machine
// without a GPU `ctest -L gpu` showed tests "Passed" that had run nothing. Here a binary in
// which any test skipped (and none failed) exits 77, which tests/CMakeLists.txt declares as
// SKIP_RETURN_CODE, so ctest says "Skipped"; the reasons are printed last. With
// TITAN_GPU_TESTS_MUST_RUN=1 (bench/gpu_check.sh, on the GPU machine) a skip is a failure.
// A filter that selects no test fails too: nothing checked is not a pass.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <iostream>

namespace {
constexpr int kSkipReturnCode = 77;

bool must_run() {
  const char* v = std::getenv("TITAN_GPU_TESTS_MUST_RUN");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}
}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  const auto& unit = *::testing::UnitTest::GetInstance();
  if (unit.test_to_run_count() == 0) {
    std::cout << "FAIL: no test selected (filter " << ::testing::GTEST_FLAG(filter) << ")\n";
    return 1;
  }
  if (rc != 0 || unit.skipped_test_count() == 0) return rc;
  const bool fail = must_run();
  std::cout << (fail ? "FAIL (TITAN_GPU_TESTS_MUST_RUN is set): " : "SKIPPED: ") << unit.skipped_test_count() << " of "
            << unit.test_to_run_count() << " tests skipped, " << unit.successful_test_count() << " passed\n";
  for (int s = 0; s < unit.total_test_suite_count(); ++s) {
    const auto& suite = *unit.GetTestSuite(s);
    for (int t = 0; t < suite.total_test_count(); ++t) {
      const auto& info = *suite.GetTestInfo(t);
      if (!info.result()->Skipped()) continue;
      std::cout << "  skipped " << suite.name() << "." << info.name() << ":";
      for (int p = 0; p < info.result()->total_part_count(); ++p) {
        const auto& part = info.result()->GetTestPartResult(p);
        if (part.skipped()) std::cout << " " << part.message();
      }
      std::cout << "\n";
    }
  }
  return fail ? 1 : kSkipReturnCode;
}
