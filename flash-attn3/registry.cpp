#include "registry.h"

#include <utility>
#include <vector>

namespace sgl_fa3 {
namespace {
// Function-local static: safe against static-initialisation order across translation units.
std::vector<std::pair<KernelKey, FwdKernel>>& table() {
  static std::vector<std::pair<KernelKey, FwdKernel>> entries;
  return entries;
}
}  // namespace

const FwdKernel* find_fwd(const KernelKey& key) {
  for (const auto& [k, kernel] : table())
    if (k == key) return &kernel;
  return nullptr;
}

FwdRegistration::FwdRegistration(const KernelKey& key, const FwdKernel& kernel) {
  table().emplace_back(key, kernel);
}

}  // namespace sgl_fa3
