# Types of the tcalloc package: its public API, re-exported from the
# modules that define it (see __init__.py).
from tcalloc._engine import _C_API as _C_API
from tcalloc._engine import _C_API_EXT as _C_API_EXT
from tcalloc._engine import debug_enabled as debug_enabled
from tcalloc._engine import get_max_total_thread_cache_bytes as get_max_total_thread_cache_bytes
from tcalloc._engine import get_memory_limit as get_memory_limit
from tcalloc._engine import get_release_rate as get_release_rate
from tcalloc._engine import release_free_memory as release_free_memory
from tcalloc._engine import reset_peaks as reset_peaks
from tcalloc._engine import set_max_total_thread_cache_bytes as set_max_total_thread_cache_bytes
from tcalloc._engine import set_memory_limit as set_memory_limit
from tcalloc._engine import set_release_rate as set_release_rate
from tcalloc._engine import size_class_of as size_class_of
from tcalloc._engine import size_class_table as size_class_table
from tcalloc._engine import stats as stats
from tcalloc._engine import stats_text as stats_text
from tcalloc._engine import set_sample_rate as set_sample_rate
from tcalloc._engine import get_sample_rate as get_sample_rate
from tcalloc._engine import install as install
from tcalloc._engine import installed as installed
from tcalloc._engine import uninstall as uninstall
from tcalloc.buffer import Buffer as Buffer
from tcalloc.buffer import BufferPool as BufferPool
from tcalloc.buffer import alloc as alloc
from tcalloc.buffer import TRACEMALLOC_DOMAIN as TRACEMALLOC_DOMAIN
from tcalloc.profile import profile as profile
from tcalloc.heapprof import Frame as Frame
from tcalloc.heapprof import Profile as Profile
from tcalloc.heapprof import Sample as Sample
from tcalloc.heapprof import allocation_profile as allocation_profile
from tcalloc.heapprof import heap_profile as heap_profile
from tcalloc.heapprof import peak_heap_profile as peak_heap_profile

__version__: str

def get_include() -> str: ...
def get_pxd_dir() -> str: ...
def __dir__() -> list[str]: ...
