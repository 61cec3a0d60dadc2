// Op registration under the per-build namespace TORCH_EXTENSION_NAME, plus the empty Python
// module init that lets `from . import <extension>` load the shared object.
#pragma once

#include <Python.h>

#define SGL_FA3_CONCAT_(a, b) a##b
#define SGL_FA3_CONCAT(a, b) SGL_FA3_CONCAT_(a, b)
#define SGL_FA3_STRINGIFY_(x) #x
#define SGL_FA3_STRINGIFY(x) SGL_FA3_STRINGIFY_(x)

#define STABLE_TORCH_LIBRARY_EXPAND(NAME, MODULE) STABLE_TORCH_LIBRARY(NAME, MODULE)
#define STABLE_TORCH_LIBRARY_IMPL_EXPAND(NAME, DEVICE, MODULE) \
  STABLE_TORCH_LIBRARY_IMPL(NAME, DEVICE, MODULE)

#define REGISTER_EXTENSION(NAME)                                                         \
  PyMODINIT_FUNC SGL_FA3_CONCAT(PyInit_, NAME)() {                                       \
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, SGL_FA3_STRINGIFY(NAME),  \
                                        nullptr, 0, nullptr};                            \
    return PyModule_Create(&module);                                                     \
  }
