use candle_core::{Device, Tensor, Var};
use peft_engine::peft::{nf4::Nf4Tensor, nf4_op::Nf4Linear};
use std::sync::Arc;
#[test]
fn timing() {
    let (o, i, m) = (1536usize, 576usize, 256usize);
    let w: Vec<f32> = (0..o * i).map(|k| ((k * 7919 % 1000) as f32 - 500.0) * 1e-4).collect();
    let q = Arc::new(Nf4Tensor::quantize(&w, (o, i), true).unwrap());
    let wd = q.dequantize().unwrap();
    let lin = Nf4Linear::new(q);
    let x0 = Tensor::from_vec((0..m * i).map(|k| ((k * 31 % 97) as f32) * 0.01).collect::<Vec<_>>(), (m, i), &Device::Cpu).unwrap();
    for _ in 0..2 {
        let t = std::time::Instant::now();
        for _ in 0..10 { let x = Var::from_tensor(&x0).unwrap(); let y = lin.forward(x.as_tensor()).unwrap(); y.sum_all().unwrap().backward().unwrap(); }
        let a = t.elapsed().as_secs_f64() / 10.0;
        let t = std::time::Instant::now();
        for _ in 0..10 { let x = Var::from_tensor(&x0).unwrap(); let y = x.as_tensor().matmul(&wd.t().unwrap()).unwrap(); y.sum_all().unwrap().backward().unwrap(); }
        let b = t.elapsed().as_secs_f64() / 10.0;
        let t = std::time::Instant::now();
        for _ in 0..10 { let _ = q_deq(&lin); }
        let c = t.elapsed().as_secs_f64() / 10.0;
        eprintln!("fwd+bwd nf4 {:.2} ms, dense {:.2} ms, full dequant {:.2} ms", a * 1e3, b * 1e3, c * 1e3);
    }
}
fn q_deq(l: &Nf4Linear) -> Vec<f32> { l.weight().dequantize_vec() }
