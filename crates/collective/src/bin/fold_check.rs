//! Run under `mpirun -np N`: every process folds its share of the same pseudo-random partials
//! with `fold_partials` and checks the sum against one process adding all of them in order,
//! bit for bit; rank 0 prints `ok N (the MPI)` (tests/mpi.rs reads it).

use simplecnn_collective::{fold_partials, mpi_world::MpiWorld, share, Collective};

fn main() {
    let world = MpiWorld::start().expect("MPI starts");
    let (groups, len) = (16, 1000);
    // Values of very different sizes, so that any other order of additions gives other bits.
    let value = |g: usize, i: usize| {
        let h = (g * 7919 + i * 104_729) as f64;
        ((h * 0.618_033_988_7).fract() - 0.5) * 10f64.powi(((g + i) % 9) as i32 - 4)
    };
    let all: Vec<Vec<f32>> = (0..groups)
        .map(|g| (0..len).map(|i| value(g, i) as f32).collect())
        .collect();
    let mut expected = vec![0f32; len];
    for p in &all {
        expected.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    let (first, count) = share(groups, world.size(), world.rank());
    let mine = &all[first..first + count];
    let got = fold_partials(&world, mine, len).expect("fold");
    let same = got
        .iter()
        .zip(&expected)
        .all(|(a, b)| a.to_bits() == b.to_bits());

    let all64: Vec<Vec<f64>> = (0..groups)
        .map(|g| (0..len).map(|i| value(g, i)).collect())
        .collect();
    let mut expected64 = vec![0f64; len];
    for p in &all64 {
        expected64.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    let got64 = fold_partials(&world, &all64[first..first + count], len).expect("fold");
    let same64 = got64
        .iter()
        .zip(&expected64)
        .all(|(a, b)| a.to_bits() == b.to_bits());

    let flags = world
        .all_gather_bytes(&[u8::from(same && same64)])
        .expect("gather");
    if world.rank() == 0 {
        match flags.iter().all(|f| f == &[1]) {
            true => println!("ok {} ({})", world.size(), world.describe()),
            false => println!("different sums on ranks {flags:?}"),
        }
    }
}
