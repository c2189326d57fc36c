# Type stub of the cffi extension ctxlink._ctxcore (built from module/core by
# sdk/ctxlink/_ffi_build.py). Its declarations are the CDEF there; import it only
# through ctxlink._native.
from typing import Any

ffi: Any
lib: Any
