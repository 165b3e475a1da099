"""The ``.cmz`` container, as specified in ``spec/cmz.md``.

* :mod:`.constants` — every number and name of the spec (magic, versions,
  limits, dtype and encoding tables); ``tests/test_spec.py`` parses the
  spec's tables against it.
* :mod:`.header` — the msgpack header: records, exact key sets, the
  ordered checks of spec §7 up to the segment table.
* :mod:`.container` — :class:`~.container.CmzFile` (memory-mapped reader)
  and :class:`~.container.ContainerWriter` (atomic writer).
* :mod:`.encodings` — per-encoding segment roles, the data checks and
  decode of ``raw``/``codebook``/``sparse`` tensors, and
  :class:`~.encodings.Compressed`, the packed form kernels run on.

May import :mod:`cmodel.errors`, :mod:`cmodel.codecs` and
:mod:`cmodel.kernels` (hot loops); never :mod:`cmodel.encode`,
:mod:`cmodel.train`, :mod:`cmodel.runtime` or :mod:`cmodel.bench`.
"""
