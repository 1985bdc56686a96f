"""Three numba intrinsics that let compiled code share memory without reference counting.

numba passes arrays as reference-counted structs; every helper call and every view then pays atomic
increments and decrements, which once took most of the kernel's time. The replay's state instead lives
in a few flat arrays ("arenas") whose owner (a :class:`specmd_env.Replay`) keeps them alive, and
compiled code sees them through *borrowed* views (no owner, so reference counting is a no-op):

* :func:`borrow` -- the same array without its owner;
* :func:`array_at` -- the 1-D array of ``length`` items of a dtype at a raw address;
* :func:`call_hook` -- call the compiled function at an address with three int64 arguments. Policies
  are compiled separately (``numba.cfunc``) and the kernel calls them through their address, so the
  kernel is compiled once, cached on disk, and never specialised per policy.

All three are valid only while the memory's owner keeps it alive: use them on the replay's arenas
during a call, never return or store what they give.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def borrow(typingctx, arr):
    """``arr`` without its reference-counted owner."""
    def codegen(context, builder, sig, args):
        src = context.make_array(arr)(context, builder, value=args[0])
        dst = context.make_array(arr)(context, builder)
        for name in ("parent", "nitems", "itemsize", "data", "shape", "strides"):
            setattr(dst, name, getattr(src, name))
        dst.meminfo = cgutils.get_null_value(dst.meminfo.type)
        return dst._getvalue()
    return arr(arr), codegen


@intrinsic
def array_at(typingctx, addr, length, dtype):
    """The 1-D C array of ``length`` items of ``dtype`` (a numba/numpy scalar type) at ``addr``."""
    if not isinstance(dtype, types.NumberClass):
        return None
    arr_t = types.Array(dtype.instance_type, 1, "C")

    def codegen(context, builder, sig, args):
        ary = context.make_array(arr_t)(context, builder)
        data_t = context.get_data_type(arr_t.dtype)
        itemsize = context.get_abi_sizeof(data_t)
        data = builder.inttoptr(args[0], data_t.as_pointer())
        context.populate_array(ary, data=data, shape=[args[1]], strides=[cgutils.intp_t(itemsize)],
                               itemsize=cgutils.intp_t(itemsize), meminfo=None)
        return ary._getvalue()
    return arr_t(types.int64, types.int64, dtype), codegen


@intrinsic
def array2d_at(typingctx, addr, rows, cols, dtype):
    """The C-ordered [rows, cols] array of ``dtype`` at ``addr`` (borrowed, like :func:`array_at`)."""
    if not isinstance(dtype, types.NumberClass):
        return None
    arr_t = types.Array(dtype.instance_type, 2, "C")

    def codegen(context, builder, sig, args):
        ary = context.make_array(arr_t)(context, builder)
        data_t = context.get_data_type(arr_t.dtype)
        itemsize = context.get_abi_sizeof(data_t)
        data = builder.inttoptr(args[0], data_t.as_pointer())
        row_stride = builder.mul(args[2], cgutils.intp_t(itemsize))
        context.populate_array(ary, data=data, shape=[args[1], args[2]],
                               strides=[row_stride, cgutils.intp_t(itemsize)],
                               itemsize=cgutils.intp_t(itemsize), meminfo=None)
        return ary._getvalue()
    return types.Array(dtype.instance_type, 2, "C")(types.int64, types.int64, types.int64, dtype), codegen


@intrinsic
def call_hook(typingctx, fn, a, b, c):
    """``fn(a, b, c)`` for the C function ``int64 fn(int64, int64, int64)`` at address ``fn``."""
    sig = types.int64(types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        ptr = builder.inttoptr(args[0], ir.FunctionType(i64, [i64, i64, i64]).as_pointer())
        return builder.call(ptr, [args[1], args[2], args[3]])
    return sig, codegen
