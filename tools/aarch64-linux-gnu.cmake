# CMake toolchain file: cross-compile the extension for aarch64 Linux with
# Debian's gcc-aarch64-linux-gnu (used by tools/aarch64_test.sh).  The Python
# and NumPy headers come from the arm64 sysroot that script unpacks.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
