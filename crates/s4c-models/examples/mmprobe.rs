use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use std::time::Instant;
type B = Flex;
fn time<F: FnMut() -> Tensor<B, 2>>(mut f: F) -> f64 {
    for _ in 0..3 {
        let _ = f().into_data();
    }
    let mut v = vec![];
    for _ in 0..15 {
        let t = Instant::now();
        let _ = f().into_data();
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[7]
}
fn main() {
    let d = Default::default();
    for (o, i) in [(1536usize, 576usize), (49152, 576)] {
        let w: Tensor<B, 2> = Tensor::random([o, i], Distribution::Default, &d);
        let wt: Tensor<B, 2> = Tensor::from_data(w.clone().transpose().into_data(), &d);
        for m in [1usize, 2, 4, 8, 16, 32, 64] {
            let x: Tensor<B, 2> = Tensor::random([m, i], Distribution::Default, &d);
            let a = time(|| x.clone().matmul(w.clone().transpose()));
            let b = time(|| x.clone().matmul(wt.clone()));
            let c = time(|| w.clone().matmul(x.clone().transpose()).transpose());
            let e = time(|| {
                wt.clone()
                    .transpose()
                    .matmul(x.clone().transpose())
                    .transpose()
            });
            println!("{o}x{i} m={m}: xWt(view) {a:.3} ms  x·Wt(contig) {b:.3} ms  W·xT {c:.3} ms  (Wt)T·xT {e:.3}");
        }
    }
}
