// CPU twin of csrc/cuda/assignment_cuda.cu: exact rectangular linear assignment by shortest
// augmenting paths (Jonker-Volgenant family, Dijkstra on reduced costs), one problem per OpenMP
// thread. Costs are read in their own dtype; potentials and path lengths are kept in double so
// float32 inputs are solved exactly w.r.t. their float32 values.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "flowfast/assignment.h"

namespace ff {
namespace {

// Scratch for one problem; reused across the problems a thread solves.
struct SapWorkspace {
  std::vector<double> u, v, shortest;
  std::vector<int64_t> col4row, row4col, path, remaining, visited_rows;
  std::vector<char> row_visited;

  void reset(int64_t n, int64_t m) {
    u.assign(n, 0.0);
    v.assign(m, 0.0);
    shortest.assign(m, 0.0);
    col4row.assign(n, -1);
    row4col.assign(m, -1);
    path.assign(m, -1);
    remaining.assign(m, 0);
    visited_rows.clear();
    visited_rows.reserve(n);
    row_visited.assign(n, 0);
  }
};

template <typename T>
class SapSolver {
 public:
  SapSolver(const T* cost, int64_t n, int64_t m, int64_t row_stride, bool maximize, SapWorkspace& ws)
      : cost_(cost), n_(n), m_(m), row_stride_(row_stride), sign_(maximize ? -1.0 : 1.0), ws_(ws) {}

  void solve(int64_t* col_for_row) {
    ws_.reset(n_, m_);
    greedy_row_reduction();
    if (n_ == m_ && m_ > 1) augmenting_row_reduction();
    for (int64_t row = 0; row < n_; ++row) {
      if (ws_.col4row[row] < 0) augment_from(row);
    }
    std::copy(ws_.col4row.begin(), ws_.col4row.end(), col_for_row);
  }

 private:
  double c(int64_t i, int64_t j) const { return sign_ * static_cast<double>(cost_[i * row_stride_ + j]); }

  // u_i = min_j c_ij with v = 0 keeps every reduced cost >= 0 and every free column at the same
  // potential (0), which is what makes later augmentations optimal in the rectangular case too.
  // Each row whose argmin column is still free is assigned on the spot (a tight edge).
  void greedy_row_reduction() {
    for (int64_t i = 0; i < n_; ++i) {
      double best = std::numeric_limits<double>::infinity();
      int64_t best_j = 0;
      for (int64_t j = 0; j < m_; ++j) {
        const double cij = c(i, j);
        if (cij < best) {
          best = cij;
          best_j = j;
        }
      }
      ws_.u[i] = best;
      if (ws_.row4col[best_j] < 0) {
        ws_.row4col[best_j] = i;
        ws_.col4row[i] = best_j;
      }
    }
  }

  // Jonker-Volgenant's augmenting row reduction (square problems only): each free row takes its
  // best column at the price of lowering that column's potential to the row's second-best value,
  // which evicts the previous owner. Cheap O(m) steps that leave few rows for Dijkstra. Afterwards
  // every assigned row is tight at its minimum reduced cost, so u is recomputed from v. Not used
  // when n < m: it moves free columns off potential 0, which would break optimality there.
  void augmenting_row_reduction() {
    auto& u = ws_.u;
    auto& v = ws_.v;
    auto& col4row = ws_.col4row;
    auto& row4col = ws_.row4col;
    std::vector<int64_t> free_rows, next_free;
    for (int64_t i = 0; i < n_; ++i) {
      if (col4row[i] < 0) free_rows.push_back(i);
    }
    int64_t budget = 8 * n_ + 64;  // bounds float-rounding ping-pong; leftovers go to Dijkstra
    for (int pass = 0; pass < 2 && !free_rows.empty(); ++pass) {
      next_free.clear();
      size_t k = 0;
      while (k < free_rows.size()) {
        const int64_t i = free_rows[k++];
        if (--budget < 0) {
          next_free.push_back(i);
          continue;
        }
        const T* row = cost_ + i * row_stride_;
        double u1 = std::numeric_limits<double>::infinity(), u2 = u1;
        int64_t j1 = 0, j2 = 0;
        for (int64_t j = 0; j < m_; ++j) {
          const double h = sign_ * static_cast<double>(row[j]) - v[j];
          if (h < u2) {
            if (h < u1) {
              u2 = u1;
              j2 = j1;
              u1 = h;
              j1 = j;
            } else {
              u2 = h;
              j2 = j;
            }
          }
        }
        int64_t evicted = row4col[j1];
        const bool lowered = u1 < u2;
        if (lowered) {
          v[j1] -= u2 - u1;
        } else if (evicted >= 0) {
          j1 = j2;
          evicted = row4col[j2];
        }
        row4col[j1] = i;
        col4row[i] = j1;
        if (evicted >= 0) {
          col4row[evicted] = -1;
          if (lowered) {
            free_rows[--k] = evicted;  // retry it at once: its old column just got dearer
          } else {
            next_free.push_back(evicted);
          }
        }
      }
      free_rows.swap(next_free);
    }
    for (int64_t i = 0; i < n_; ++i) {
      const T* row = cost_ + i * row_stride_;
      if (col4row[i] >= 0) {
        u[i] = sign_ * static_cast<double>(row[col4row[i]]) - v[col4row[i]];
      } else {
        double best = std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < m_; ++j) best = std::min(best, sign_ * static_cast<double>(row[j]) - v[j]);
        u[i] = best;
      }
    }
  }

  // Dijkstra from the free row `start` over reduced costs c_ij - u_i - v_j until it reaches a
  // free column, then update the potentials and flip the path.
  void augment_from(int64_t start) {
    auto& u = ws_.u;
    auto& v = ws_.v;
    auto& shortest = ws_.shortest;
    auto& path = ws_.path;
    auto& remaining = ws_.remaining;
    const double inf = std::numeric_limits<double>::infinity();

    int64_t n_remaining = m_;
    for (int64_t j = 0; j < m_; ++j) {
      remaining[j] = j;
      shortest[j] = inf;
    }
    for (int64_t r : ws_.visited_rows) ws_.row_visited[r] = 0;
    ws_.visited_rows.clear();

    double min_val = 0.0;
    int64_t i = start;
    int64_t sink = -1;
    while (sink < 0) {
      ws_.row_visited[i] = 1;
      ws_.visited_rows.push_back(i);
      const T* row = cost_ + i * row_stride_;
      const double base = min_val - u[i];
      double lowest = inf;
      int64_t lowest_pos = -1;
      for (int64_t pos = 0; pos < n_remaining; ++pos) {
        const int64_t j = remaining[pos];
        const double r = base + sign_ * static_cast<double>(row[j]) - v[j];
        if (r < shortest[j]) {
          path[j] = i;
          shortest[j] = r;
        }
        // Ties prefer a free column: it ends the search one step earlier.
        if (shortest[j] < lowest || (shortest[j] == lowest && ws_.row4col[j] < 0)) {
          lowest = shortest[j];
          lowest_pos = pos;
        }
      }
      FF_CHECK(lowest_pos >= 0 && std::isfinite(lowest),
               "linear_assignment: no feasible augmenting path (non-finite costs?)");
      min_val = lowest;
      const int64_t j = remaining[lowest_pos];
      std::swap(remaining[lowest_pos], remaining[--n_remaining]);  // settled columns collect at the tail
      if (ws_.row4col[j] < 0) {
        sink = j;
      } else {
        i = ws_.row4col[j];
      }
    }

    // Potentials: columns settled by Dijkstra (no longer in `remaining`) move by their slack.
    u[start] += min_val;
    for (int64_t r : ws_.visited_rows) {
      if (r != start) u[r] += min_val - shortest[ws_.col4row[r]];
    }
    for (int64_t pos = n_remaining; pos < m_; ++pos) {
      const int64_t j = remaining[pos];
      v[j] -= min_val - shortest[j];
    }

    int64_t j = sink;
    while (true) {
      const int64_t r = path[j];
      ws_.row4col[j] = r;
      std::swap(ws_.col4row[r], j);
      if (r == start) break;
    }
  }

  const T* cost_;
  int64_t n_, m_, row_stride_;
  double sign_;
  SapWorkspace& ws_;
};

template <typename T>
void solve_batch(const AssignmentParams& p) {
  const TensorView& cv = p.cost;
  const int64_t B = cv.shape[0], n = cv.shape[1], m = cv.shape[2];
  const T* base = static_cast<const T*>(cv.data);
  int64_t* out = static_cast<int64_t*>(p.col_for_row.data);

  // Exceptions must not cross an OpenMP region: record the first message and rethrow after.
  std::string first_error;
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp parallel if (B > 1)
#endif
  {
    SapWorkspace ws;
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t b = 0; b < B; ++b) {
      try {
        SapSolver<T> solver(base + b * cv.strides[0], n, m, cv.strides[1], p.maximize, ws);
        solver.solve(out + b * n);
      } catch (const std::exception& e) {
#if defined(FLOWFAST_WITH_OPENMP)
#pragma omp critical(ff_assignment_error)
#endif
        if (first_error.empty()) first_error = e.what();
      }
    }
  }
  if (!first_error.empty()) throw Error(first_error);
}

}  // namespace

void assignment_cpu(const AssignmentParams& p) {
  FF_DISPATCH_FLOATING(p.cost.dtype, scalar_t, "linear_assignment", [&] { solve_batch<scalar_t>(p); });
}

}  // namespace ff
