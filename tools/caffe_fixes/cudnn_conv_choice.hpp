// How CuDNNConvolutionLayer chooses each direction's algorithm and math type under the switches
// of cudnn_switches.hpp (cudnn_switches.patch calls these once per layer and input shape).
//   heuristic: cuDNN's ranking (cudnnGet*Algorithm_v7), as BVLC Caffe and cudnn8_algo.hpp do;
//   measure:   cudnnFind*Ex runs every algorithm once on the layer's shapes, fastest first.
// Either way the choice is the first result that ran, needs at most the workspace limit and,
// with CAFFE_CUDNN_DETERMINISTIC=1, is one cuDNN reports deterministic. The convolution
// descriptor is queried under CUDNN_FMA_MATH (FP32 only) or, with CAFFE_TF32=1,
// CUDNN_DEFAULT_MATH (TF32 tensor cores allowed), and then set to the chosen result's math type,
// as cuDNN needs both the algorithm and its math type to run what it ranked.
// tools/install_caffe.sh copies it to include/caffe/util/ for a cuDNN build (cuDNN 8 or newer).
#ifndef CAFFE_UTIL_CUDNN_CONV_CHOICE_HPP_
#define CAFFE_UTIL_CUDNN_CONV_CHOICE_HPP_

#include <cudnn.h>

#include <sstream>
#include <string>

#include "caffe/util/cudnn.hpp"
#include "caffe/util/cudnn_switches.hpp"

namespace caffe {
namespace cudnn {

// One direction's choice: the algorithm (as int: each direction has its own enum), its math type,
// the workspace cuDNN said it needs and, when measured, its time.
struct ConvChoice {
  int algo;
  cudnnMathType_t math;
  size_t memory;
  float time_ms;  // negative under the heuristic
};

inline const char* MathName(cudnnMathType_t math) {
  switch (math) {
    case CUDNN_DEFAULT_MATH: return "DEFAULT_MATH";
    case CUDNN_TENSOR_OP_MATH: return "TENSOR_OP_MATH";
    case CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION: return "TENSOR_OP_MATH_ALLOW_CONVERSION";
    case CUDNN_FMA_MATH: return "FMA_MATH";
  }
  return "unknown math";
}

// "forward IMPLICIT_PRECOMP_GEMM (FMA_MATH, 0 bytes, 1.234 ms)"
inline std::string Describe(const char* direction, const char* const* names, int count,
                            const ConvChoice& c) {
  std::ostringstream out;
  out << direction << " ";
  if (c.algo >= 0 && c.algo < count) out << names[c.algo];
  else out << "algorithm " << c.algo;
  out << " (" << MathName(c.math) << ", " << c.memory << " bytes";
  if (c.time_ms >= 0) out << ", " << c.time_ms << " ms";
  out << ")";
  return out.str();
}

static const char* const kFwdAlgoNames[] = {"IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM",
    "DIRECT", "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
static const char* const kBwdFilterAlgoNames[] = {"ALGO_0", "ALGO_1", "FFT", "ALGO_3",
    "WINOGRAD", "WINOGRAD_NONFUSED", "FFT_TILING"};
static const char* const kBwdDataAlgoNames[] = {"ALGO_0", "ALGO_1", "FFT", "FFT_TILING",
    "WINOGRAD", "WINOGRAD_NONFUSED"};

// The first ranked result that ran, fits the limit and, where asked, is deterministic.
template <typename Perf>
inline ConvChoice Pick(cudnnStatus_t status, const Perf* perf, int count,
                       const CudnnSwitches& s, const std::string& what) {
  CUDNN_CHECK(status);
  for (int i = 0; i < count; ++i) {
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= s.workspace_bytes() &&
        (!s.deterministic || perf[i].determinism == CUDNN_DETERMINISTIC)) {
      ConvChoice c = {static_cast<int>(perf[i].algo),
                      s.tf32 ? perf[i].mathType : CUDNN_FMA_MATH, perf[i].memory,
                      s.measure ? perf[i].time : -1.0f};
      return c;
    }
  }
  LOG(FATAL) << what << ": no algorithm runs within CAFFE_CUDNN_WORKSPACE_MB="
             << s.workspace_mb << (s.deterministic ? " among the deterministic ones" : "")
             << ": raise the limit"
             << (s.deterministic ? " or unset CAFFE_CUDNN_DETERMINISTIC" : "");
  return ConvChoice();
}

inline void SetMath(cudnnConvolutionDescriptor_t conv, cudnnMathType_t math) {
  CUDNN_CHECK(cudnnSetConvolutionMathType(conv, math));
}

// `query(perf, n, &count)` ranks up to n results, cudnnFind*Ex or cudnnGet*_v7, with `conv`
// set to the math type they are to be ranked under; `conv` keeps the chosen one's.
template <typename Perf, int N, typename Query>
inline ConvChoice Choose(cudnnConvolutionDescriptor_t conv, const CudnnSwitches& s,
                         const std::string& what, Query query) {
  Perf perf[N];
  int count = 0;
  SetMath(conv, s.tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH);
  const ConvChoice c = Pick(query(perf, N, &count), perf, count, s, what);
  SetMath(conv, c.math);
  return c;
}

// In measure mode cudnnFind*Ex writes `out` (the direction's output) and `workspace` (the limit).
inline ConvChoice ChooseForward(cudnnHandle_t h, const CudnnSwitches& s,
    cudnnTensorDescriptor_t x, const void* x_data, cudnnFilterDescriptor_t w, const void* w_data,
    cudnnConvolutionDescriptor_t conv, cudnnTensorDescriptor_t y, void* out, void* workspace,
    const std::string& what) {
  return Choose<cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT>(
      conv, s, what + " forward", [&](cudnnConvolutionFwdAlgoPerf_t* perf, int n, int* count) {
    return s.measure ? cudnnFindConvolutionForwardAlgorithmEx(h, x, x_data, w, w_data, conv, y,
                           out, n, count, perf, workspace, s.workspace_bytes())
                     : cudnnGetConvolutionForwardAlgorithm_v7(h, x, w, conv, y, n, count, perf);
  });
}

inline ConvChoice ChooseBackwardFilter(cudnnHandle_t h, const CudnnSwitches& s,
    cudnnTensorDescriptor_t x, const void* x_data, cudnnTensorDescriptor_t dy,
    const void* dy_data, cudnnConvolutionDescriptor_t conv, cudnnFilterDescriptor_t dw,
    void* out, void* workspace, const std::string& what) {
  return Choose<cudnnConvolutionBwdFilterAlgoPerf_t, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT>(
      conv, s, what + " backward filter",
      [&](cudnnConvolutionBwdFilterAlgoPerf_t* perf, int n, int* count) {
    return s.measure ? cudnnFindConvolutionBackwardFilterAlgorithmEx(h, x, x_data, dy, dy_data,
                           conv, dw, out, n, count, perf, workspace, s.workspace_bytes())
                     : cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, x, dy, conv, dw, n,
                           count, perf);
  });
}

inline ConvChoice ChooseBackwardData(cudnnHandle_t h, const CudnnSwitches& s,
    cudnnFilterDescriptor_t w, const void* w_data, cudnnTensorDescriptor_t dy,
    const void* dy_data, cudnnConvolutionDescriptor_t conv, cudnnTensorDescriptor_t dx,
    void* out, void* workspace, const std::string& what) {
  return Choose<cudnnConvolutionBwdDataAlgoPerf_t, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT>(
      conv, s, what + " backward data",
      [&](cudnnConvolutionBwdDataAlgoPerf_t* perf, int n, int* count) {
    return s.measure ? cudnnFindConvolutionBackwardDataAlgorithmEx(h, w, w_data, dy, dy_data,
                           conv, dx, out, n, count, perf, workspace, s.workspace_bytes())
                     : cudnnGetConvolutionBackwardDataAlgorithm_v7(h, w, dy, conv, dx, n, count,
                           perf);
  });
}

}  // namespace cudnn
}  // namespace caffe

#endif  // CAFFE_UTIL_CUDNN_CONV_CHOICE_HPP_
