// Python entry points of the `dfm` family (flowfast/ops/dfm.py calls them).
#include "bindings/views.h"
#include "flowfast/dfm.h"

namespace ff::bind {

void bind_dfm(py::module_& m) {
  m.def("dfm_pack", [](const py::tuple& tokens, const py::tuple& packed, int64_t vocab, uintptr_t stream) {
    DfmPackParams p;
    p.tokens = to_view(tokens);
    p.packed = to_view(packed);
    p.vocab = vocab;
    p.stream = to_ptr(stream);
    call_released(&dfm_pack, p);
  });
  m.def("dfm_pack_words", [](int64_t vocab, int64_t length) { return pack_layout(vocab, length).words; });
  // step: (vocab, t, h, inv_tau, seed, offset, row_offset)
  m.def("dfm_inversion_step", [](const py::tuple& keys, const py::tuple& x, const py::tuple& x_packed,
                                 const py::tuple& x_new, const py::object& posterior, const py::object& best,
                                 const py::tuple& step, uintptr_t stream) {
    FF_CHECK(step.size() == 7, "internal: dfm step descriptor must have 7 fields");
    DfmStepParams p;
    p.keys = to_view(keys);
    p.x = to_view(x);
    p.x_packed = to_view(x_packed);
    p.x_new = to_view(x_new);
    p.posterior = to_view_or_empty(posterior);
    p.best = to_view_or_empty(best);
    p.vocab = step[0].cast<int64_t>();
    p.t = step[1].cast<double>();
    p.h = step[2].cast<double>();
    p.inv_tau = step[3].cast<double>();
    p.seed = step[4].cast<uint64_t>();
    p.offset = step[5].cast<uint64_t>();
    p.row_offset = step[6].cast<int64_t>();
    p.stream = to_ptr(stream);
    call_released(&dfm_inversion_step, p);
  });
}

}  // namespace ff::bind
