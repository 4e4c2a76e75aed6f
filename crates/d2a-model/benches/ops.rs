#![allow(missing_docs)] // criterion_group! generates undocumented public items
//! Criterion benchmarks of d2a's kernels against candle 0.11's, on the shapes of the kernel
//! issue (batch 1, 128 -> 128 channels, 64x64, 3x3) and on the model's other fused ops.
//!
//! `cargo bench -p d2a-model --bench ops [-- FILTER]`; ids carry the op, the shapes, the mode
//! and the implementation, e.g. `conv2d/grouped32/1x128x64x64-k3/fwd+bwd/d2a`.

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, criterion_group, criterion_main};
use d2a_model::ops::{
    Conv2dConfig, ConvBackend, batch_norm_act, conv2d, conv2d_affine, max_pool2d, set_conv_backend,
    up2,
};

fn randn(dims: &[usize], std: f32) -> Var {
    Var::from_tensor(&Tensor::randn(0f32, std, dims, &Device::Cpu).unwrap()).unwrap()
}

fn convolutions(c: &mut Criterion) {
    // As the `d2a` binary does: without it, large buffers are fresh mmaps faulted in per call.
    d2a_model::tune_allocator();
    let x = randn(&[1, 128, 64, 64], 1.0);
    for (name, groups, dilation) in [("dense", 1, 1), ("grouped32", 32, 1), ("dilated5", 1, 5)] {
        let w = randn(&[128, 128 / groups, 3, 3], 0.1);
        let cfg = Conv2dConfig::square(1, dilation, dilation, groups);
        for (backend, label) in [(ConvBackend::D2a, "d2a"), (ConvBackend::Candle, "candle")] {
            let id = format!("conv2d/{name}/1x128x64x64-k3");
            c.bench_function(&format!("{id}/fwd/{label}"), |b| {
                set_conv_backend(backend);
                b.iter(|| conv2d(&x, &w, cfg).unwrap())
            });
            c.bench_function(&format!("{id}/fwd+bwd/{label}"), |b| {
                set_conv_backend(backend);
                b.iter(|| {
                    conv2d(&x, &w, cfg)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap()
                })
            });
        }
        set_conv_backend(ConvBackend::D2a);
    }
    // The inference unit: conv + folded BatchNorm + ReLU in one kernel, against conv then the
    // separate BatchNorm + ReLU kernel.
    let w = randn(&[128, 128, 3, 3], 0.1);
    let cfg = Conv2dConfig::square(1, 1, 1, 1);
    let (scale, shift) = (randn(&[128], 1.0), randn(&[128], 1.0));
    let stats = d2a_model::ops::BnStats {
        mean: vec![0.0; 128],
        var: vec![1.0; 128],
        count: 0,
    };
    c.bench_function("conv2d-bn-relu/1x128x64x64-k3/inference/fused", |b| {
        b.iter(|| conv2d_affine(&x, &w, (&scale, &shift), cfg, true).unwrap())
    });
    c.bench_function("conv2d-bn-relu/1x128x64x64-k3/inference/separate", |b| {
        b.iter(|| {
            let y = conv2d(&x, &w, cfg).unwrap();
            batch_norm_act(&y, &scale, &shift, Some(stats.clone()), 1e-5, true).unwrap()
        })
    });
}

fn other_ops(c: &mut Criterion) {
    let x = randn(&[2, 64, 128, 128], 1.0);
    let (gamma, beta) = (randn(&[64], 1.0), randn(&[64], 1.0));
    c.bench_function("batch_norm_relu/2x64x128x128/fwd+bwd/d2a", |b| {
        b.iter(|| {
            let (y, _) = batch_norm_act(&x, &gamma, &beta, None, 1e-5, true).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    c.bench_function("up2/2x64x128x128/fwd+bwd/d2a", |b| {
        b.iter(|| up2(&x).unwrap().sum_all().unwrap().backward().unwrap())
    });
    c.bench_function("max_pool2d-k2/2x64x128x128/fwd+bwd/d2a", |b| {
        b.iter(|| {
            max_pool2d(&x, 2, 2, 0)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = convolutions, other_ops
}
criterion_main!(benches);
