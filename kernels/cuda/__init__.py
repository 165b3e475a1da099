"""numba-cuda twins of the CPU kernels in ``cmodel.kernels`` (issue 5).

Each module here mirrors one CPU kernel module: the same public function
names and argument order, taking device arrays (numba DeviceNDArray or any
object with ``__cuda_array_interface__``).  Importing this package needs the
``cuda`` extra (numba-cuda); it never needs a GPU until a kernel launches.
"""
