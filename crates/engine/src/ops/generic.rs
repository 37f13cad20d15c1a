//! Device-generic ops: a forward and a backward written once with candle's tensor ops, run on
//! whatever device their input lives on (CPU, CUDA, Metal).
//!
//! Why not just compose candle ops in the model: candle's autograd keeps every intermediate of
//! a composition alive until backward and, for a matmul against a frozen weight, computes that
//! weight's useless gradient too. An [`GenericOp1`] keeps only its input (and what the op holds,
//! such as a frozen weight or NF4 codes) and recomputes what its backward needs, exactly as the
//! fused CPU kernels do — but with candle primitives that every backend implements, so a GPU
//! only runs kernels candle already tests. The CPU keeps the fused kernels; tests run these
//! generic versions on the CPU against them (`tests/generic_ops.rs`).
//!
//! Mechanics: candle hands a custom op its input as backend storage; [`Generic`] copies it into
//! a fresh untracked tensor on the same device, runs [`GenericOp1::forward`] there (nothing is
//! recorded: the op's own backward stands for the whole body), and copies the result back into
//! backend storage. The two copies are device-side and cost one pass over input and output.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, MetalStorage, Result, Shape, Storage,
    Tensor,
};

/// A one-input op written with tensor ops.
pub trait GenericOp1: Send + Sync {
    fn name(&self) -> &'static str;
    /// The forward pass on an untracked, contiguous `x` (any device).
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// `d loss / d x` from `d loss / d y`; `y` is the forward's result.
    fn backward(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>>;
}

/// A two-input op written with tensor ops.
pub trait GenericOp2: Send + Sync {
    fn name(&self) -> &'static str;
    fn forward(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// Gradients of both inputs from `d loss / d y`.
    fn backward(
        &self,
        a: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)>;
}

/// Adapts a [`GenericOp1`] or [`GenericOp2`] to candle's custom-op traits on every backend.
pub struct Generic<T>(pub T);

/// Applies `op` to `x`; on a tracked `x` the result backpropagates through `op.backward`.
pub fn apply1<T: GenericOp1 + 'static>(x: &Tensor, op: T) -> Result<Tensor> {
    x.apply_op1(Generic(op))
}

/// Applies `op` to `(a, b)`.
pub fn apply2<T: GenericOp2 + 'static>(a: &Tensor, b: &Tensor, op: T) -> Result<Tensor> {
    a.apply_op2(b, Generic(op))
}

/// A contiguous, untracked tensor holding a copy of `(storage, layout)`'s values.
fn to_tensor<S: BackendStorage>(s: &S, l: &Layout, wrap: fn(S) -> Storage) -> Result<Tensor> {
    let mut dst = s.device().zeros_impl(l.shape(), s.dtype())?;
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok(Tensor::from_storage(
        wrap(dst),
        l.shape().clone(),
        BackpropOp::none(),
        false,
    ))
}

/// `t`'s values as fresh backend storage of the same device.
fn from_tensor<S: BackendStorage>(
    t: &Tensor,
    unwrap: fn(&Storage) -> Option<&S>,
) -> Result<(S, Shape)> {
    let (st, l) = t.storage_and_layout();
    let s = unwrap(&st).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "generic op: result on {:?}, not the input's device",
            t.device().location()
        ))
    })?;
    let mut dst = s.device().zeros_impl(l.shape(), s.dtype())?;
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok((dst, l.shape().clone()))
}

fn cpu(s: &Storage) -> Option<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Some(c),
        _ => None,
    }
}

fn cuda(s: &Storage) -> Option<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Some(c),
        _ => None,
    }
}

fn metal(s: &Storage) -> Option<&MetalStorage> {
    match s {
        Storage::Metal(c) => Some(c),
        _ => None,
    }
}

impl<T: GenericOp1> Generic<T> {
    fn run1<S: BackendStorage>(
        &self,
        s: &S,
        l: &Layout,
        wrap: fn(S) -> Storage,
        unwrap: fn(&Storage) -> Option<&S>,
    ) -> Result<(S, Shape)> {
        let x = to_tensor(s, l, wrap)?;
        from_tensor(&self.0.forward(&x)?, unwrap)
    }
}

impl<T: GenericOp1> CustomOp1 for Generic<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run1(s, l, Storage::Cpu, cpu)
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        self.run1(s, l, Storage::Cuda, cuda)
    }

    fn metal_fwd(&self, s: &MetalStorage, l: &Layout) -> Result<(MetalStorage, Shape)> {
        self.run1(s, l, Storage::Metal, metal)
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        self.0.backward(&x.detach(), &y.detach(), dy)
    }
}

impl<T: GenericOp2> Generic<T> {
    #[allow(clippy::type_complexity)]
    fn run2<S: BackendStorage>(
        &self,
        (s1, l1): (&S, &Layout),
        (s2, l2): (&S, &Layout),
        wrap: fn(S) -> Storage,
        unwrap: fn(&Storage) -> Option<&S>,
    ) -> Result<(S, Shape)> {
        let a = to_tensor(s1, l1, wrap)?;
        let b = to_tensor(s2, l2, wrap)?;
        from_tensor(&self.0.forward(&a, &b)?, unwrap)
    }
}

impl<T: GenericOp2> CustomOp2 for Generic<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run2((s1, l1), (s2, l2), Storage::Cpu, cpu)
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run2((s1, l1), (s2, l2), Storage::Cuda, cuda)
    }

    fn metal_fwd(
        &self,
        s1: &MetalStorage,
        l1: &Layout,
        s2: &MetalStorage,
        l2: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.run2((s1, l1), (s2, l2), Storage::Metal, metal)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.0.backward(&a.detach(), &b.detach(), &y.detach(), dy)
    }
}
