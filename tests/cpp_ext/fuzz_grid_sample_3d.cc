// Fuzz driver for the GridSample3D kernel, built by test_sanitized_kernel.py with AddressSanitizer
// and UndefinedBehaviorSanitizer (incl. float-cast-overflow): random shapes (size-1 axes, odd
// channel counts, empty outputs) and grids mixing ordinary, boundary, huge and non-finite values,
// every mode x padding x align_corners, tasks in shuffled order as a thread pool may run them.
// X and Y are allocated at their exact sizes, so any out-of-bounds access is reported. Every
// output must be finite (X is). Prints the number of warps checked.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "grid_sample_3d.h"

using megaportraits::GridSample3DProblem;
using megaportraits::GridSampleOptions;
using megaportraits::Interpolation;
using megaportraits::Padding;

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 300;
  std::mt19937 rng(1234);
  auto uniform_int = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const float inf = std::numeric_limits<float>::infinity();
  const float specials[] = {std::nanf(""), inf, -inf, 1e30f, -1e30f, 3e9f, -3e9f, 1.f, -1.f, 0.f,
                            1e-40f, std::nextafter(1.f, 2.f), std::nextafter(-1.f, -2.f)};
  int checked = 0;
  for (int it = 0; it < iterations; ++it) {
    const int64_t channel_choices[] = {1, 2, 3, 4, 5, 7, 9, 16, 32, 100};
    const int64_t x_shape[5] = {uniform_int(1, 2), channel_choices[uniform_int(0, 9)],
                                uniform_int(1, 6), uniform_int(1, 6), uniform_int(1, 6)};
    const int64_t grid_shape[5] = {x_shape[0], uniform_int(0, 4), uniform_int(1, 5), uniform_int(1, 40), 3};
    std::vector<float> x(static_cast<size_t>(x_shape[0] * x_shape[1] * x_shape[2] * x_shape[3] * x_shape[4]));
    for (auto& v : x) v = std::uniform_real_distribution<float>(-1.f, 1.f)(rng);
    std::vector<float> grid(static_cast<size_t>(grid_shape[0] * grid_shape[1] * grid_shape[2] * grid_shape[3] * 3));
    for (auto& g : grid) {
      g = uniform_int(0, 2) == 0 ? specials[uniform_int(0, 12)] : std::uniform_real_distribution<float>(-3.f, 3.f)(rng);
    }
    int64_t y_shape[5];
    megaportraits::check_shapes(x_shape, 5, grid_shape, 5);
    megaportraits::output_shape(x_shape, grid_shape, y_shape);
    std::vector<float> y(static_cast<size_t>(y_shape[0] * y_shape[1] * y_shape[2] * y_shape[3] * y_shape[4]));

    for (auto interpolation : {Interpolation::kLinear, Interpolation::kNearest}) {
      for (auto padding : {Padding::kZeros, Padding::kBorder, Padding::kReflection}) {
        for (bool align_corners : {false, true}) {
          GridSampleOptions options;
          options.interpolation = interpolation;
          options.padding = padding;
          options.align_corners = align_corners;
          std::fill(y.begin(), y.end(), std::nanf(""));
          GridSample3DProblem problem(x.data(), x_shape, grid.data(), grid_shape, y.data(), options);
          for (auto phase : GridSample3DProblem::kPhases) {
            std::vector<size_t> order(problem.task_count(phase));
            std::iota(order.begin(), order.end(), size_t{0});
            std::shuffle(order.begin(), order.end(), rng);
            for (size_t task : order) problem.run_task(phase, task);
          }
          for (float v : y) {
            if (!std::isfinite(v)) {
              std::printf("non-finite output at iteration %d\n", it);
              return 1;
            }
          }
          ++checked;
        }
      }
    }
  }
  std::printf("%d\n", checked);
  return 0;
}
