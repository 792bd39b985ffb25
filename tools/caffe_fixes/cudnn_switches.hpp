// The switches that choose how Caffe's cuDNN convolutions and cuBLAS run, read once per process
// from the environment. Unset (or empty), each keeps BVLC Caffe's rule:
//   CAFFE_CUDNN_WORKSPACE_MB  per-layer workspace limit in MiB, 0..1048576 (default 8, Caffe's)
//   CAFFE_CUDNN_ALGO          heuristic (default: cuDNN's ranking, first that fits the limit) or
//                             measure (cudnnFind*Ex times each algorithm once per layer and shape;
//                             the fastest that fits the limit)
//   CAFFE_CUDNN_DETERMINISTIC 1: only algorithms cuDNN reports deterministic (default 0)
//   CAFFE_TF32                1: TF32 tensor-core math for convolutions and cuBLAS (default 0:
//                             convolutions FMA-only, cuBLAS left at its FP32 default)
// A bad value stops Caffe with one line naming it and what was expected. No CUDA in this file,
// so that a CPU-only test program compiles it (tests/test_cudnn_switches.py).
// tools/install_caffe.sh copies it to include/caffe/util/ for a cuDNN build.
#ifndef CAFFE_UTIL_CUDNN_SWITCHES_HPP_
#define CAFFE_UTIL_CUDNN_SWITCHES_HPP_

#include <glog/logging.h>

#include <cstddef>
#include <cstdlib>
#include <sstream>
#include <string>

namespace caffe {

struct CudnnSwitches {
  size_t workspace_mb;
  bool measure;
  bool deterministic;
  bool tf32;

  size_t workspace_bytes() const { return workspace_mb * 1024 * 1024; }

  // One line for Caffe's log: what every cuDNN convolution of this process runs under.
  std::string Describe() const {
    std::ostringstream out;
    out << "CAFFE_CUDNN_WORKSPACE_MB=" << workspace_mb
        << " CAFFE_CUDNN_ALGO=" << (measure ? "measure" : "heuristic")
        << " CAFFE_CUDNN_DETERMINISTIC=" << deterministic << " CAFFE_TF32=" << tf32;
    return out.str();
  }

  // The process's switches, parsed from the environment on first use.
  static const CudnnSwitches& Get() {
    static const CudnnSwitches switches = FromEnvironment();
    return switches;
  }

  static CudnnSwitches FromEnvironment() {
    CudnnSwitches s;
    s.workspace_mb = Number("CAFFE_CUDNN_WORKSPACE_MB", 8, 1048576);
    s.measure = Choice("CAFFE_CUDNN_ALGO", "heuristic", "measure");
    s.deterministic = Choice("CAFFE_CUDNN_DETERMINISTIC", "0", "1");
    s.tf32 = Choice("CAFFE_TF32", "0", "1");
    return s;
  }

 private:
  static const char* Value(const char* name) {
    const char* value = std::getenv(name);
    return value != NULL && *value != '\0' ? value : NULL;
  }

  // A whole number from 0 to `most`, digits only; `fallback` when unset.
  static size_t Number(const char* name, size_t fallback, size_t most) {
    const char* value = Value(name);
    if (value == NULL) return fallback;
    size_t number = 0;
    const char* c = value;
    for (; *c >= '0' && *c <= '9' && number <= most; ++c) number = number * 10 + (*c - '0');
    LOG_IF(FATAL, *c != '\0' || number > most)
        << name << "=" << value << ": expected a whole number of MiB from 0 to " << most
        << " (default " << fallback << ")";
    return number;
  }

  // false for `off` (the default, also when unset), true for `on`.
  static bool Choice(const char* name, const char* off, const char* on) {
    const char* value = Value(name);
    if (value == NULL || std::string(value) == off) return false;
    LOG_IF(FATAL, std::string(value) != on)
        << name << "=" << value << ": expected " << off << " (the default) or " << on;
    return true;
  }
};

}  // namespace caffe

#endif  // CAFFE_UTIL_CUDNN_SWITCHES_HPP_
