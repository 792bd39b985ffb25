// cuDNN 8 removed the three algorithm choosers BVLC Caffe's cuDNN convolution and deconvolution
// layers call (BVLC/caffe issue 6970), with the preference enums they take. Their _v7 forms
// return every algorithm ranked by cuDNN's heuristics; these wrappers keep Caffe's call sites and
// its rule: the first algorithm that succeeds within Caffe's workspace limit.
// tools/install_caffe.sh includes this file from include/caffe/util/cudnn.hpp.
#ifndef CAFFE_UTIL_CUDNN8_ALGO_HPP_
#define CAFFE_UTIL_CUDNN8_ALGO_HPP_
#if CUDNN_MAJOR >= 8

#include <cstddef>

typedef enum { CUDNN_CONVOLUTION_FWD_SPECIFY_WORKSPACE_LIMIT } cudnnConvolutionFwdPreference_t;
typedef enum { CUDNN_CONVOLUTION_BWD_FILTER_SPECIFY_WORKSPACE_LIMIT }
    cudnnConvolutionBwdFilterPreference_t;
typedef enum { CUDNN_CONVOLUTION_BWD_DATA_SPECIFY_WORKSPACE_LIMIT }
    cudnnConvolutionBwdDataPreference_t;

// The first ranked algorithm that ran and needs at most `limit` bytes of workspace.
template <typename Perf, typename Algo>
inline cudnnStatus_t caffe_cudnn_pick(cudnnStatus_t status, const Perf* perf, int count,
                                      size_t limit, Algo* algo) {
  if (status != CUDNN_STATUS_SUCCESS) return status;
  for (int i = 0; i < count; ++i) {
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= limit) {
      *algo = perf[i].algo;
      return CUDNN_STATUS_SUCCESS;
    }
  }
  return CUDNN_STATUS_NOT_SUPPORTED;
}

inline cudnnStatus_t cudnnGetConvolutionForwardAlgorithm(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t x, const cudnnFilterDescriptor_t w,
    const cudnnConvolutionDescriptor_t conv, const cudnnTensorDescriptor_t y,
    cudnnConvolutionFwdPreference_t, size_t limit, cudnnConvolutionFwdAlgo_t* algo) {
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int count = 0;
  cudnnStatus_t status = cudnnGetConvolutionForwardAlgorithm_v7(
      handle, x, w, conv, y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf);
  return caffe_cudnn_pick(status, perf, count, limit, algo);
}

inline cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t x, const cudnnTensorDescriptor_t dy,
    const cudnnConvolutionDescriptor_t conv, const cudnnFilterDescriptor_t dw,
    cudnnConvolutionBwdFilterPreference_t, size_t limit, cudnnConvolutionBwdFilterAlgo_t* algo) {
  cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  int count = 0;
  cudnnStatus_t status = cudnnGetConvolutionBackwardFilterAlgorithm_v7(
      handle, x, dy, conv, dw, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, perf);
  return caffe_cudnn_pick(status, perf, count, limit, algo);
}

inline cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t w, const cudnnTensorDescriptor_t dy,
    const cudnnConvolutionDescriptor_t conv, const cudnnTensorDescriptor_t dx,
    cudnnConvolutionBwdDataPreference_t, size_t limit, cudnnConvolutionBwdDataAlgo_t* algo) {
  cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  int count = 0;
  cudnnStatus_t status = cudnnGetConvolutionBackwardDataAlgorithm_v7(
      handle, w, dy, conv, dx, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perf);
  return caffe_cudnn_pick(status, perf, count, limit, algo);
}

#endif  // CUDNN_MAJOR >= 8
#endif  // CAFFE_UTIL_CUDNN8_ALGO_HPP_
