#include "titan/models/llama3/decoder.h"

#include <algorithm>
#include <cmath>

#include "titan/ops/ops.h"

namespace titan::llama3 {

KvCacheDecoder::KvCacheDecoder(Transformer& model, int64_t max_len)
    : m_(model), a_(model.args()), max_len_(max_len) {
  TITAN_CHECK(max_len > 0, "empty KV cache");
  const int64_t half = a_.head_dim() / 2, d = a_.dim, kv = a_.kv_dim(), f = a_.ffn_hidden();
  cos_ = Tensor::zeros({max_len, half});
  sin_ = Tensor::zeros({max_len, half});
  cpu::rope_tables(cos_.f32(), sin_.f32(), max_len, a_.head_dim(), a_.rope_theta);
  k_cache_.assign(a_.n_layers, std::vector<float>(max_len * kv));
  v_cache_.assign(a_.n_layers, std::vector<float>(max_len * kv));
  x_.resize(d), xn_.resize(d), q_.resize(a_.n_heads * a_.head_dim()), k_.resize(kv), v_.resize(kv);
  att_.resize(a_.n_heads * a_.head_dim()), o_.resize(d), h_.resize(d), a1_.resize(f), a3_.resize(f), g_.resize(f);
  scores_.resize(max_len), logits_.resize(a_.vocab_size), rstd_.resize(1);
}

const std::vector<float>& KvCacheDecoder::step(int32_t token) {
  TITAN_CHECK(pos_ < max_len_, "KV cache full at ", max_len_, " positions");
  TITAN_CHECK(token >= 0 && token < a_.vocab_size, "token ", token, " outside the vocabulary");
  const int64_t d = a_.dim, hd = a_.head_dim(), kv = a_.kv_dim(), f = a_.ffn_hidden();
  const int64_t group = a_.n_heads / a_.n_kv_heads, half = hd / 2;
  auto w = [&](const std::string& name) { return m_.parameter(name).full.f32(); };
  std::copy_n(w("tok_embeddings.weight") + static_cast<int64_t>(token) * d, d, x_.begin());
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int64_t l = 0; l < a_.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    cpu::rmsnorm_forward(x_.data(), w(p + "attention_norm.weight"), xn_.data(), rstd_.data(), 1, d, a_.norm_eps);
    cpu::linear_forward(xn_.data(), w(p + "attention.wq.weight"), q_.data(), 1, d, a_.n_heads * hd);
    cpu::linear_forward(xn_.data(), w(p + "attention.wk.weight"), k_.data(), 1, d, kv);
    cpu::linear_forward(xn_.data(), w(p + "attention.wv.weight"), v_.data(), 1, d, kv);
    // Rotary tables offset to this position: a one-row batch then rotates by angle(pos).
    cpu::rope_forward(q_.data(), cos_.f32() + pos_ * half, sin_.f32() + pos_ * half, 1, 1, a_.n_heads, hd);
    cpu::rope_forward(k_.data(), cos_.f32() + pos_ * half, sin_.f32() + pos_ * half, 1, 1, a_.n_kv_heads, hd);
    std::copy(k_.begin(), k_.end(), k_cache_[l].begin() + pos_ * kv);
    std::copy(v_.begin(), v_.end(), v_cache_[l].begin() + pos_ * kv);
    for (int64_t h = 0; h < a_.n_heads; ++h) {
      const int64_t kvh = h / group;
      const float* qh = q_.data() + h * hd;
      float mx = -INFINITY;
      for (int64_t t = 0; t <= pos_; ++t) {
        const float* kt = k_cache_[l].data() + t * kv + kvh * hd;
        float s = 0;
        for (int64_t i = 0; i < hd; ++i) s += qh[i] * kt[i];
        scores_[t] = s * scale;
        mx = std::max(mx, scores_[t]);
      }
      float sum = 0;
      for (int64_t t = 0; t <= pos_; ++t) sum += (scores_[t] = std::exp(scores_[t] - mx));
      float* out = att_.data() + h * hd;
      std::fill(out, out + hd, 0.0f);
      for (int64_t t = 0; t <= pos_; ++t) {
        const float* vt = v_cache_[l].data() + t * kv + kvh * hd;
        const float pt = scores_[t] / sum;
        for (int64_t i = 0; i < hd; ++i) out[i] += pt * vt[i];
      }
    }
    cpu::linear_forward(att_.data(), w(p + "attention.wo.weight"), o_.data(), 1, a_.n_heads * hd, d);
    for (int64_t i = 0; i < d; ++i) h_[i] = x_[i] + o_[i];
    cpu::rmsnorm_forward(h_.data(), w(p + "ffn_norm.weight"), xn_.data(), rstd_.data(), 1, d, a_.norm_eps);
    cpu::linear_forward(xn_.data(), w(p + "feed_forward.w1.weight"), a1_.data(), 1, d, f);
    cpu::linear_forward(xn_.data(), w(p + "feed_forward.w3.weight"), a3_.data(), 1, d, f);
    cpu::swiglu_forward(a1_.data(), a3_.data(), g_.data(), f);
    cpu::linear_forward(g_.data(), w(p + "feed_forward.w2.weight"), o_.data(), 1, f, d);
    for (int64_t i = 0; i < d; ++i) x_[i] = h_[i] + o_[i];
  }
  cpu::rmsnorm_forward(x_.data(), w("norm.weight"), xn_.data(), rstd_.data(), 1, d, a_.norm_eps);
  cpu::linear_forward(xn_.data(), w("output.weight"), logits_.data(), 1, d, a_.vocab_size);
  ++pos_;
  return logits_;
}

}  // namespace titan::llama3
