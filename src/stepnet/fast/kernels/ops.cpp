// stepnet's compiled CPU kernels (kernels.c) as torch.library custom operators, stepnet::*:
// each checks its tensors, allocates its outputs and calls the C entry point, so the
// dispatcher, torch.compile and torch.export see one operator where ctypes saw a foreign
// call. Fake (meta) functions and autograd are registered from Python (ops.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

extern "C" {
int stepnet_gate_backward(const void* grad, const void* fx, const void* h, void* grad_fx,
                          void* row_sum, int64_t rows, int64_t inner, int64_t h_rows, int dtype,
                          int64_t begin, int64_t end);
int stepnet_gate_relu_backward(const void* grad, const void* y, const void* fx, const void* h,
                               void* grad_x, void* grad_fx, void* row_sum, const void* pool_grad,
                               int64_t rows, int64_t inner, int64_t h_rows, int dtype,
                               int64_t begin, int64_t end);
int stepnet_euler_step(const void* x, const void* fx, const void* h, void* out, void* pooled,
                       double* sums, int64_t rows, int64_t inner, int64_t h_rows, int relu, int fma,
                       int dtype, int64_t begin, int64_t end);
int stepnet_row_moments(const void* z, const void* filters, double* sum, double* sumsq,
                        double* filtered, int64_t rows, int64_t inner, int64_t channels, int dtype,
                        int64_t begin, int64_t end);
int stepnet_affine_step(const void* x, const void* z, const void* a, const void* b, void* out,
                        void* pooled, int64_t rows, int64_t inner, int64_t a_rows, int fma,
                        int dtype, int64_t begin, int64_t end);
int stepnet_affine_step_backward(const void* grad, const void* y, const void* z,
                                 const void* pool_grad, void* grad_x, void* sum_g, void* sum_gz,
                                 int64_t rows, int64_t inner, int dtype, int64_t begin,
                                 int64_t end);
int stepnet_affine_grad_z(const void* z, const void* grad_x, const void* a, const double* u,
                          const double* v, const double* shift, void* grad_z, int64_t rows,
                          int64_t inner, int64_t a_rows, int64_t channels, int dtype, int64_t begin,
                          int64_t end);
int stepnet_adaptor_forward(const void* p, const void* d, const void* w, const void* gamma,
                            const void* beta, const void* ie_w, const void* ie_b,
                            void* running_mean, void* running_var, void* h, void* z, void* zhat,
                            void* g, void* invstd, int64_t B, int64_t C, int update, int dtype,
                            double eps, double momentum);
int stepnet_adaptor_backward(const void* grad_h, const void* p, const void* d, const void* w,
                             const void* gamma, const void* ie_w, const void* h, const void* z,
                             const void* zhat, const void* g, const void* invstd, void* grad_p,
                             void* grad_d, void* grad_w, void* grad_gamma, void* grad_beta,
                             void* grad_ie_w, void* grad_ie_b, int64_t B, int64_t C, int dtype);
}

namespace {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;

// the C kernels' dtype code (0 float32, 1 float64)
int dtype_code(const Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "stepnet kernels take float32 or float64 tensors, not ", t.scalar_type());
  return t.scalar_type() == at::kDouble ? 1 : 0;
}

// a contiguous CPU tensor of `like`'s dtype
void check_like(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "stepnet kernels: ", name, " is not on the CPU");
  TORCH_CHECK(t.is_contiguous(), "stepnet kernels: ", name, " is not contiguous");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "stepnet kernels: ", name, " is ",
              t.scalar_type(), ", expected ", like.scalar_type());
}

// a full-size [B, C, *S] tensor (at least 3 dimensions, not empty) of `like`'s shape
void check_full(const Tensor& t, const Tensor& like, const char* name) {
  check_like(t, like, name);
  TORCH_CHECK(t.dim() >= 3 && t.numel() > 0, "stepnet kernels: ", name,
              " must be a non-empty [B, C, *S] tensor, got ", t.sizes());
  TORCH_CHECK(t.sizes() == like.sizes(), "stepnet kernels: ", name, " has shape ", t.sizes(),
              ", expected ", like.sizes());
}

// a channel gate [B|1, C, 1, ...] for `like` [B, C, *S]
void check_gate(const Tensor& h, const Tensor& like) {
  check_like(h, like, "h");
  bool ok = h.dim() == like.dim() && h.size(1) == like.size(1) &&
            (h.size(0) == 1 || h.size(0) == like.size(0));
  for (int64_t i = 2; ok && i < h.dim(); ++i) ok = h.size(i) == 1;
  TORCH_CHECK(ok, "stepnet kernels: h of shape ", h.sizes(), " is not a channel gate for ",
              like.sizes());
}

// one value per (sample, channel) [B, C] or per channel [1, C]
void check_rows(const Tensor& a, const Tensor& like, const char* name) {
  check_like(a, like, name);
  TORCH_CHECK(
      a.dim() == 2 && a.size(1) == like.size(1) && (a.size(0) == 1 || a.size(0) == like.size(0)),
      "stepnet kernels: ", name, " of shape ", a.sizes(), " is not [B|1, C] for ", like.sizes());
}

// exactly one value per (sample, channel) [B, C]
void check_per_row(const Tensor& t, const Tensor& like, const char* name) {
  check_like(t, like, name);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == like.size(0) && t.size(1) == like.size(1),
              "stepnet kernels: ", name, " of shape ", t.sizes(), " is not [B, C] for ",
              like.sizes());
}

void check_status(int status) {
  TORCH_CHECK(status == 0, "stepnet kernel: no memory for its scratch buffer");
}

int64_t rows_of(const Tensor& t) { return t.size(0) * t.size(1); }

// `kernel(begin, end)` over the rows [0, rows) of `inner` values each, shared out over
// torch's threads (small tensors stay on one: at least GRAIN_SIZE values a thread)
template <typename Kernel>
void for_rows(int64_t rows, int64_t inner, const Kernel& kernel) {
  const int64_t grain =
      std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(inner, 1));
  at::parallel_for(0, rows, grain,
                   [&](int64_t begin, int64_t end) { check_status(kernel(begin, end)); });
}

Tensor per_row(const Tensor& like, at::ScalarType dtype) {
  return at::empty({like.size(0), like.size(1)}, like.options().dtype(dtype));
}

const void* ptr_or_null(const OptionalTensor& t) { return t.has_value() ? t->data_ptr() : nullptr; }

Tensor none_like(const Tensor& like) { return at::empty({0}, like.options()); }

std::tuple<Tensor, Tensor> gate_backward(const Tensor& grad, const Tensor& fx, const Tensor& h) {
  check_full(grad, grad, "grad");
  check_full(fx, grad, "fx");
  check_gate(h, grad);
  const int dtype = dtype_code(grad);
  Tensor grad_fx = at::empty_like(grad), row_sum = per_row(grad, grad.scalar_type());
  const int64_t rows = rows_of(grad);
  const int64_t inner = grad.numel() / rows;
  for_rows(rows, inner, [&](int64_t begin, int64_t end) {
    return stepnet_gate_backward(grad.data_ptr(), fx.data_ptr(), h.data_ptr(), grad_fx.data_ptr(),
                                 row_sum.data_ptr(), rows, inner, h.numel(), dtype, begin, end);
  });
  return {grad_fx, row_sum};
}

std::tuple<Tensor, Tensor, Tensor> gate_relu_backward(const Tensor& grad, const Tensor& y,
                                                      const Tensor& fx, const Tensor& h,
                                                      const OptionalTensor& pool_grad) {
  check_full(grad, grad, "grad");
  check_full(y, grad, "y");
  check_full(fx, grad, "fx");
  check_gate(h, grad);
  if (pool_grad) check_per_row(*pool_grad, grad, "pool_grad");
  const int dtype = dtype_code(grad);
  Tensor grad_x = at::empty_like(grad), grad_fx = at::empty_like(grad);
  Tensor row_sum = per_row(grad, grad.scalar_type());
  const int64_t rows = rows_of(grad);
  const int64_t inner = grad.numel() / rows;
  for_rows(rows, inner, [&](int64_t begin, int64_t end) {
    return stepnet_gate_relu_backward(grad.data_ptr(), y.data_ptr(), fx.data_ptr(), h.data_ptr(),
                                      grad_x.data_ptr(), grad_fx.data_ptr(), row_sum.data_ptr(),
                                      ptr_or_null(pool_grad), rows, inner, h.numel(), dtype, begin,
                                      end);
  });
  return {grad_x, grad_fx, row_sum};
}

std::tuple<Tensor, Tensor, Tensor> euler_step(const Tensor& x, const Tensor& fx,
                                              const OptionalTensor& h, bool relu, bool sums,
                                              bool pool, bool fma) {
  check_full(x, x, "x");
  check_full(fx, x, "fx");
  if (h) check_gate(*h, x);
  const int dtype = dtype_code(x);
  Tensor out = at::empty_like(x);
  Tensor planes =
      sums ? at::empty({3, x.size(0), x.size(1)}, x.options().dtype(at::kDouble)) : none_like(x);
  Tensor pooled = pool ? per_row(x, x.scalar_type()) : none_like(x);
  const int64_t rows = rows_of(x);
  const int64_t inner = x.numel() / rows;
  for_rows(rows, inner, [&](int64_t begin, int64_t end) {
    return stepnet_euler_step(x.data_ptr(), fx.data_ptr(), ptr_or_null(h), out.data_ptr(),
                              pool ? pooled.data_ptr() : nullptr,
                              sums ? static_cast<double*>(planes.data_ptr()) : nullptr, rows, inner,
                              h ? h->numel() : 1, relu, fma, dtype, begin, end);
  });
  return {out, planes, pooled};
}

std::tuple<Tensor, Tensor, Tensor> row_moments(const Tensor& z, const OptionalTensor& filters) {
  check_full(z, z, "z");
  if (filters) {
    check_like(*filters, z, "filters");
    TORCH_CHECK(filters->sizes() == z.sizes().slice(1), "stepnet kernels: filters of shape ",
                filters->sizes(), " are not [C, *S] for ", z.sizes());
  }
  const int dtype = dtype_code(z);
  Tensor total = per_row(z, at::kDouble), squares = per_row(z, at::kDouble);
  Tensor filtered = filters ? per_row(z, at::kDouble) : none_like(z);
  const int64_t rows = rows_of(z);
  const int64_t inner = z.numel() / rows;
  for_rows(rows, inner, [&](int64_t begin, int64_t end) {
    return stepnet_row_moments(z.data_ptr(), ptr_or_null(filters),
                               static_cast<double*>(total.data_ptr()),
                               static_cast<double*>(squares.data_ptr()),
                               filters ? static_cast<double*>(filtered.data_ptr()) : nullptr, rows,
                               inner, z.size(1), dtype, begin, end);
  });
  return {total, squares, filtered};
}

std::tuple<Tensor, Tensor> affine_relu_step(const OptionalTensor& x, const Tensor& z,
                                            const Tensor& a, const Tensor& b, bool pool, bool fma) {
  check_full(z, z, "z");
  if (x) check_full(*x, z, "x");
  check_rows(a, z, "a");
  check_rows(b, z, "b");
  TORCH_CHECK(a.sizes() == b.sizes(), "stepnet kernels: a and b differ in shape");
  const int dtype = dtype_code(z);
  Tensor out = at::empty_like(z);
  Tensor pooled = pool ? per_row(z, z.scalar_type()) : none_like(z);
  const int64_t rows = rows_of(z);
  const int64_t inner = z.numel() / rows;
  for_rows(rows, inner, [&](int64_t begin, int64_t end) {
    return stepnet_affine_step(ptr_or_null(x), z.data_ptr(), a.data_ptr(), b.data_ptr(),
                               out.data_ptr(), pool ? pooled.data_ptr() : nullptr, rows, inner,
                               a.numel(), fma, dtype, begin, end);
  });
  return {out, pooled};
}

std::tuple<Tensor, Tensor, Tensor> affine_relu_step_backward(const Tensor& grad, const Tensor& y,
                                                             const Tensor& z,
                                                             const OptionalTensor& pool_grad) {
  check_full(grad, grad, "grad");
  check_full(y, grad, "y");
  check_full(z, grad, "z");
  if (pool_grad) check_per_row(*pool_grad, grad, "pool_grad");
  const int dtype = dtype_code(grad);
  Tensor grad_x = at::empty_like(grad);
  Tensor sum_g = per_row(grad, grad.scalar_type()), sum_gz = per_row(grad, grad.scalar_type());
  const int64_t rows = rows_of(grad);
  const int64_t inner = grad.numel() / rows;
  for_rows(rows, inner, [&](int64_t begin, int64_t end) {
    return stepnet_affine_step_backward(grad.data_ptr(), y.data_ptr(), z.data_ptr(),
                                        ptr_or_null(pool_grad), grad_x.data_ptr(), sum_g.data_ptr(),
                                        sum_gz.data_ptr(), rows, inner, dtype, begin, end);
  });
  return {grad_x, sum_g, sum_gz};
}

Tensor affine_grad_z(const Tensor& z, const OptionalTensor& grad_x, const OptionalTensor& a,
                     const Tensor& u, const Tensor& v, const Tensor& shift) {
  check_full(z, z, "z");
  TORCH_CHECK(grad_x.has_value() == a.has_value(),
              "stepnet kernels: grad_x and a are given together or not at all");
  if (grad_x) {
    check_full(*grad_x, z, "grad_x");
    check_rows(*a, z, "a");
  }
  const Tensor rows_like = at::empty({0}, z.options().dtype(at::kDouble));
  for (const Tensor* t : {&u, &v, &shift}) check_like(*t, rows_like, "u, v, shift");
  TORCH_CHECK(u.sizes() == z.sizes().slice(0, 2) && v.sizes() == u.sizes() && shift.dim() == 1 &&
                  shift.size(0) == z.size(1),
              "stepnet kernels: u, v must be [B, C] and shift [C] for ", z.sizes());
  const int dtype = dtype_code(z);
  Tensor grad_z = at::empty_like(z);
  const int64_t rows = rows_of(z);
  const int64_t inner = z.numel() / rows;
  for_rows(rows, inner, [&](int64_t begin, int64_t end) {
    return stepnet_affine_grad_z(
        z.data_ptr(), ptr_or_null(grad_x), ptr_or_null(a), static_cast<const double*>(u.data_ptr()),
        static_cast<const double*>(v.data_ptr()), static_cast<const double*>(shift.data_ptr()),
        grad_z.data_ptr(), rows, inner, a ? a->numel() : 1, z.size(1), dtype, begin, end);
  });
  return grad_z;
}

void check_adaptor(const Tensor& p, const Tensor& d, const Tensor& weight,
                   std::initializer_list<const Tensor*> per_channel) {
  TORCH_CHECK(p.dim() == 2 && p.size(0) >= 2,
              "stepnet kernels: the adaptor takes [B, C] "
              "descriptors with B >= 2, got ",
              p.sizes());
  check_like(p, p, "p");
  check_like(d, p, "d");
  TORCH_CHECK(d.sizes() == p.sizes(), "stepnet kernels: d has shape ", d.sizes(), ", expected ",
              p.sizes());
  check_like(weight, p, "weight");
  TORCH_CHECK(weight.numel() == 2 * p.size(1), "stepnet kernels: weight holds ", weight.numel(),
              " values, expected ", 2 * p.size(1));
  for (const Tensor* t : per_channel) {
    check_like(*t, p, "a per-channel tensor");
    TORCH_CHECK(t->numel() == p.size(1), "stepnet kernels: a per-channel tensor holds ", t->numel(),
                " values, expected ", p.size(1));
  }
}

// functional: the updated running statistics are new tensors (empty [0] without them), which
// the caller copies into its buffers, so autograd can be registered for the operator
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> adaptor_forward(
    const Tensor& p, const Tensor& d, const Tensor& weight, const Tensor& gamma, const Tensor& beta,
    const Tensor& ie_weight, const Tensor& ie_bias, const OptionalTensor& running_mean,
    const OptionalTensor& running_var, double eps, double momentum) {
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(),
              "stepnet kernels: running_mean and running_var are given together");
  if (running_mean) {
    check_adaptor(p, d, weight,
                  {&gamma, &beta, &ie_weight, &ie_bias, &*running_mean, &*running_var});
  } else {
    check_adaptor(p, d, weight, {&gamma, &beta, &ie_weight, &ie_bias});
  }
  const int dtype = dtype_code(p);
  Tensor h = at::empty_like(p), z = at::empty_like(p), zhat = at::empty_like(p);
  Tensor gate = at::empty_like(p), invstd = at::empty({p.size(1)}, p.options());
  Tensor new_mean = running_mean ? running_mean->clone() : none_like(p);
  Tensor new_var = running_var ? running_var->clone() : none_like(p);
  check_status(stepnet_adaptor_forward(
      p.data_ptr(), d.data_ptr(), weight.data_ptr(), gamma.data_ptr(), beta.data_ptr(),
      ie_weight.data_ptr(), ie_bias.data_ptr(), running_mean ? new_mean.data_ptr() : nullptr,
      running_var ? new_var.data_ptr() : nullptr, h.data_ptr(), z.data_ptr(), zhat.data_ptr(),
      gate.data_ptr(), invstd.data_ptr(), p.size(0), p.size(1), running_mean.has_value(), dtype,
      eps, momentum));
  return {h, z, zhat, gate, invstd, new_mean, new_var};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> adaptor_backward(
    const Tensor& grad_h, const Tensor& p, const Tensor& d, const Tensor& weight,
    const Tensor& gamma, const Tensor& ie_weight, const Tensor& h, const Tensor& z,
    const Tensor& zhat, const Tensor& gate, const Tensor& invstd) {
  check_adaptor(p, d, weight, {&gamma, &ie_weight, &invstd});
  for (const Tensor* t : {&grad_h, &h, &z, &zhat, &gate}) {
    check_like(*t, p, "a [B, C] tensor");
    TORCH_CHECK(t->sizes() == p.sizes(), "stepnet kernels: a [B, C] tensor has shape ", t->sizes(),
                ", expected ", p.sizes());
  }
  const int dtype = dtype_code(p);
  Tensor grad_p = at::empty_like(p), grad_d = at::empty_like(p);
  Tensor grad_weight = at::empty_like(weight);
  Tensor grad_gamma = at::empty_like(gamma), grad_beta = at::empty_like(gamma);
  Tensor grad_ie_weight = at::empty_like(gamma), grad_ie_bias = at::empty_like(gamma);
  check_status(stepnet_adaptor_backward(
      grad_h.data_ptr(), p.data_ptr(), d.data_ptr(), weight.data_ptr(), gamma.data_ptr(),
      ie_weight.data_ptr(), h.data_ptr(), z.data_ptr(), zhat.data_ptr(), gate.data_ptr(),
      invstd.data_ptr(), grad_p.data_ptr(), grad_d.data_ptr(), grad_weight.data_ptr(),
      grad_gamma.data_ptr(), grad_beta.data_ptr(), grad_ie_weight.data_ptr(),
      grad_ie_bias.data_ptr(), p.size(0), p.size(1), dtype));
  return {grad_p, grad_d, grad_weight, grad_gamma, grad_beta, grad_ie_weight, grad_ie_bias};
}

}  // namespace

TORCH_LIBRARY(stepnet, m) {
  m.def("gate_backward(Tensor grad, Tensor fx, Tensor h) -> (Tensor, Tensor)");
  m.def(
      "gate_relu_backward(Tensor grad, Tensor y, Tensor fx, Tensor h, Tensor? pool_grad) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "euler_step(Tensor x, Tensor fx, Tensor? h, bool relu, bool sums, bool pool, "
      "bool fma) -> (Tensor, Tensor, Tensor)");
  m.def("row_moments(Tensor z, Tensor? filters) -> (Tensor, Tensor, Tensor)");
  m.def(
      "affine_relu_step(Tensor? x, Tensor z, Tensor a, Tensor b, bool pool, bool fma) "
      "-> (Tensor, Tensor)");
  m.def(
      "affine_relu_step_backward(Tensor grad, Tensor y, Tensor z, Tensor? pool_grad) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "affine_grad_z(Tensor z, Tensor? grad_x, Tensor? a, Tensor u, Tensor v, "
      "Tensor shift) -> Tensor");
  m.def(
      "adaptor_forward(Tensor p, Tensor d, Tensor weight, Tensor gamma, Tensor beta, "
      "Tensor ie_weight, Tensor ie_bias, Tensor? running_mean, "
      "Tensor? running_var, float eps, float momentum) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "adaptor_backward(Tensor grad_h, Tensor p, Tensor d, Tensor weight, Tensor gamma, "
      "Tensor ie_weight, Tensor h, Tensor z, Tensor zhat, Tensor gate, Tensor invstd) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(stepnet, CPU, m) {
  m.impl("gate_backward", &gate_backward);
  m.impl("gate_relu_backward", &gate_relu_backward);
  m.impl("euler_step", &euler_step);
  m.impl("row_moments", &row_moments);
  m.impl("affine_relu_step", &affine_relu_step);
  m.impl("affine_relu_step_backward", &affine_relu_step_backward);
  m.impl("affine_grad_z", &affine_grad_z);
  m.impl("adaptor_forward", &adaptor_forward);
  m.impl("adaptor_backward", &adaptor_backward);
}
