//! A real compute workload: primes and the Mandelbrot set, in tasks of any size.

use wasmpool_guest::task;

/// Whether `n` is prime (trial division by 6k ± 1).
#[task]
fn is_prime(n: u64) -> bool {
    prime(n)
}

fn prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut d = 5;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// How many primes lie in `[lo, hi)`.
#[task]
fn count_primes(lo: u64, hi: u64) -> u64 {
    (lo..hi).filter(|&n| prime(n)).count() as u64
}

/// Escape-time iterations (at most `max_iter`) for each of `width` points of row `row` of a
/// `width` × `height` view of the Mandelbrot set over [-2, 1] × [-1.5, 1.5].
#[task]
fn mandelbrot_row(row: u32, width: u32, height: u32, max_iter: u32) -> Vec<u32> {
    let ci = -1.5 + 3.0 * f64::from(row) / f64::from(height.max(1));
    (0..width)
        .map(|col| {
            let cr = -2.0 + 3.0 * f64::from(col) / f64::from(width.max(1));
            let (mut zr, mut zi, mut i) = (0.0f64, 0.0f64, 0);
            while i < max_iter && zr * zr + zi * zi <= 4.0 {
                let t = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = t;
                i += 1;
            }
            i
        })
        .collect()
}

/// Burns CPU for about `iterations` steps of a xorshift generator; returns the final state.
#[task]
fn spin_work(iterations: u64) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

wasmpool_guest::export_tasks!(is_prime, count_primes, mandelbrot_row, spin_work);
