"""What the fuzz targets share: the input reader and the finding they raise."""


class Finding(AssertionError):
    """A result the model says tcalloc must not give."""


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def u8(self):
        if self.pos >= len(self.data):
            raise EOFError
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u16(self):
        return self.u8() | (self.u8() << 8)

    def pick(self, seq):
        return seq[self.u16() % len(seq)]
