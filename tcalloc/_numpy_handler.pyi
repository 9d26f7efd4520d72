# Types of tcalloc._numpy_handler (a Cython module). Handlers are NumPy's
# "mem_handler" capsules, which have no type of their own before Python 3.13.
from typing import Final

handler: Final[object]

def set_handler(new_handler: object | None) -> object: ...
def get_handler() -> object: ...
