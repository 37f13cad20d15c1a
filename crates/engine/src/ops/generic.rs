//! Device-generic ops: a forward and a backward written once with candle's tensor ops, run on
//! whatever device their inputs live on (CPU, CUDA, Metal), and the switch ([`OpPath`]) that
//! picks them over the fused CPU kernels.
//!
//! Why not just compose candle ops in the model: candle's autograd keeps every intermediate of
//! a composition alive until backward, stops silently at its fused kernels (`rms_norm`, `rope`,
//! `softmax_last_dim` have no backward), and, for a matmul against a frozen weight, computes
//! that weight's useless full-size gradient too. A [`GenericOp`] keeps only its inputs (and what
//! the op holds, such as a frozen weight or NF4 codes) and recomputes what its backward needs,
//! as the fused CPU kernels do — but with candle primitives that every backend implements, so a
//! GPU only runs kernels candle already tests. The CPU keeps the fused kernels; the tests run
//! these generic versions on the CPU against them (`tests/generic_ops.rs`).
//!
//! Mechanics: candle hands a custom op its inputs as backend storage; [`Generic`] copies each
//! into a fresh untracked tensor on the same device, runs [`GenericOp::forward`] there (nothing
//! is recorded: the op's own backward stands for the whole body), and copies the result back
//! into backend storage. The copies are device-side, one pass over inputs and output. With no
//! tracked input there is no graph to record and [`apply`] calls the forward directly.
//!
//! What this is not: a kernel library. Nothing here is fused on the GPU; that waits for
//! measurements showing which generic path is a bottleneck.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::op::BackpropOp;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, MetalStorage,
    Result, Shape, Storage, Tensor,
};

/// Which implementation of the custom ops a forward pass uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OpPath {
    /// The fused kernels on the CPU, the generic ops on every other device.
    #[default]
    Auto,
    /// The generic ops everywhere (the CPU included: how the tests compare them with the fused
    /// kernels, and a fallback should a fused kernel misbehave).
    Generic,
}

impl OpPath {
    /// Whether the fused CPU kernel runs for tensors on `device`.
    pub fn fused_on(self, device: &Device) -> bool {
        self == OpPath::Auto && device.is_cpu()
    }
}

/// An op written with tensor ops over 1 to 3 inputs.
pub trait GenericOp: Send + Sync {
    fn name(&self) -> &'static str;
    /// The forward pass. In a recorded op the inputs are fresh contiguous untracked copies;
    /// called directly (nothing tracked) they are the caller's tensors, any layout.
    fn forward(&self, xs: &[Tensor]) -> Result<Tensor>;
    /// The gradient of each input whose `want` is set (`None` for the others), from the
    /// forward's inputs (detached), its result `y` and `dy = d loss / d y`.
    fn backward(
        &self,
        xs: &[Tensor],
        want: &[bool],
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>>;
}

/// Adapts a [`GenericOp`] to candle's custom-op traits on every backend.
pub struct Generic<T>(pub T);

/// Applies `op` to `xs` (1 to 3 tensors on one device); with a tracked input the result
/// backpropagates through `op.backward`.
pub fn apply<T: GenericOp + 'static>(op: T, xs: &[&Tensor]) -> Result<Tensor> {
    if !xs.iter().any(|x| x.track_op()) {
        let owned: Vec<Tensor> = xs.iter().map(|&x| x.clone()).collect();
        return op.forward(&owned);
    }
    match xs {
        [x] => x.apply_op1(Generic(op)),
        [a, b] => a.apply_op2(b, Generic(op)),
        [a, b, c] => a.apply_op3(b, c, Generic(op)),
        _ => bail!(
            "generic op {}: {} inputs (1 to 3 allowed)",
            op.name(),
            xs.len()
        ),
    }
}

/// A contiguous, untracked tensor holding a copy of `(storage, layout)`'s values.
fn to_tensor<S>(s: &S, l: &Layout, wrap: fn(S) -> Storage) -> Result<Tensor>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
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
fn from_tensor<S>(t: &Tensor, unwrap: fn(&Storage) -> Option<&S>) -> Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
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

impl<T: GenericOp> Generic<T> {
    fn run<S>(
        &self,
        inputs: &[(&S, &Layout)],
        wrap: fn(S) -> Storage,
        unwrap: fn(&Storage) -> Option<&S>,
    ) -> Result<(S, Shape)>
    where
        S: BackendStorage,
        S::Device: BackendDevice<Storage = S>,
    {
        let xs = inputs
            .iter()
            .map(|(s, l)| to_tensor(*s, l, wrap))
            .collect::<Result<Vec<_>>>()?;
        from_tensor(&self.0.forward(&xs)?, unwrap)
    }

    fn grads(&self, xs: &[&Tensor], y: &Tensor, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let want: Vec<bool> = xs.iter().map(|x| x.track_op()).collect();
        let detached: Vec<Tensor> = xs.iter().map(|x| x.detach()).collect();
        // The gradient itself is tracked only under double backward, which we never do.
        let mut g = self
            .0
            .backward(&detached, &want, &y.detach(), &dy.detach())?;
        if g.len() != xs.len() {
            bail!(
                "generic op {}: {} gradients for {} inputs",
                self.0.name(),
                g.len(),
                xs.len()
            );
        }
        for (gi, w) in g.iter_mut().zip(&want) {
            if !w {
                *gi = None;
            }
        }
        Ok(g)
    }
}

impl<T: GenericOp> CustomOp1 for Generic<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(&[(s, l)], Storage::Cpu, cpu)
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        self.run(&[(s, l)], Storage::Cuda, cuda)
    }

    fn metal_fwd(&self, s: &MetalStorage, l: &Layout) -> Result<(MetalStorage, Shape)> {
        self.run(&[(s, l)], Storage::Metal, metal)
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.grads(&[x], y, dy)?.pop().flatten())
    }
}

impl<T: GenericOp> CustomOp2 for Generic<T> {
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
        self.run(&[(s1, l1), (s2, l2)], Storage::Cpu, cpu)
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2)], Storage::Cuda, cuda)
    }

    fn metal_fwd(
        &self,
        s1: &MetalStorage,
        l1: &Layout,
        s2: &MetalStorage,
        l2: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2)], Storage::Metal, metal)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b], y, dy)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl<T: GenericOp> CustomOp3 for Generic<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2), (s3, l3)], Storage::Cpu, cpu)
    }

    #[allow(clippy::too_many_arguments)]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2), (s3, l3)], Storage::Cuda, cuda)
    }

    #[allow(clippy::too_many_arguments)]
    fn metal_fwd(
        &self,
        s1: &MetalStorage,
        l1: &Layout,
        s2: &MetalStorage,
        l2: &Layout,
        s3: &MetalStorage,
        l3: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2), (s3, l3)], Storage::Metal, metal)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b, c], y, dy)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

/// `[..., k] → [rows, k]`, contiguous (CUDA's matmul wants row-major or transposed operands).
pub(crate) fn rows2(t: &Tensor) -> Result<Tensor> {
    let k = t.dim(candle_core::D::Minus1)?;
    t.contiguous()?.reshape((t.elem_count() / k.max(1), k))
}

/// `dims` with its last entry replaced by `last`.
pub(crate) fn with_last(dims: &[usize], last: usize) -> Vec<usize> {
    let mut out = dims.to_vec();
    if let Some(d) = out.last_mut() {
        *d = last;
    }
    out
}
