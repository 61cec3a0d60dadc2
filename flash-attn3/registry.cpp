#include "registry.h"

#include <utility>
#include <vector>

namespace sgl_fa3 {
namespace {
// Function-local static: safe against static-initialisation order across translation units.
std::vector<std::pair<KernelKey, FwdKernels>>& table() {
  static std::vector<std::pair<KernelKey, FwdKernels>> entries;
  return entries;
}
}  // namespace

const FwdKernels* find_fwd(const KernelKey& key) {
  for (const auto& [k, kernels] : table())
    if (k == key) return &kernels;
  return nullptr;
}

FwdRegistration::FwdRegistration(const KernelKey& key, const FwdKernels& kernels) {
  table().emplace_back(key, kernels);
}

}  // namespace sgl_fa3
