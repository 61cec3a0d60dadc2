#include "registry.h"

#include <utility>
#include <vector>

namespace sgl_fa3 {
namespace {
// Function-local static: safe against static-initialisation order across translation units.
std::vector<std::pair<KernelKey, FwdLauncher>>& table() {
  static std::vector<std::pair<KernelKey, FwdLauncher>> entries;
  return entries;
}
}  // namespace

FwdLauncher find_fwd(const KernelKey& key) {
  for (const auto& [k, launcher] : table())
    if (k == key) return launcher;
  return nullptr;
}

FwdRegistration::FwdRegistration(const KernelKey& key, FwdLauncher launcher) {
  table().emplace_back(key, launcher);
}

}  // namespace sgl_fa3
