use burn::backend::Flex;
use burn::tensor::{module::attention, ops::AttentionModuleOptions, Bool, Distribution, Tensor};
use std::time::Instant;
type B = Flex;
fn main() {
    let d = Default::default();
    for (n, cached, cap) in [(4usize, 128usize, 512usize), (16, 128, 512), (4, 128, 4096)] {
        let q: Tensor<B, 4> = Tensor::random([1, 3, 3 * n, 64], Distribution::Default, &d);
        let full: Tensor<B, 4> = Tensor::random([1, 3, cap, 64], Distribution::Default, &d);
        let k = full.clone().slice([0..1, 0..3, 0..cached + n, 0..64]);
        let v = full.clone().slice([0..1, 0..3, 0..cached + n, 0..64]);
        let mask: Tensor<B, 4, Bool> =
            Tensor::<B, 4>::zeros([1, 3, 3 * n, cached + n], &d).equal_elem(1.0);
        let mut t = vec![];
        for _ in 0..20 {
            let s = Instant::now();
            let o = attention(
                q.clone(),
                k.clone(),
                v.clone(),
                Some(mask.clone()),
                None,
                AttentionModuleOptions::default(),
            );
            let _ = o.into_data();
            t.push(s.elapsed().as_secs_f64() * 1e3);
        }
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "n={n} cached={cached} cap={cap}: attention {:.3} ms (x30 layers = {:.1} ms)",
            t[10],
            t[10] * 30.0
        );
    }
}
