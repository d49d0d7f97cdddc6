// rustdemo: a small Rust program for demangling (legacy and v0 symbol mangling) and
// coverage of Rust code. `rustdemo N` sums the squares of 0..N and computes an area through
// a trait object; a second argument also runs the functions otherwise never called.
// See EXPECTED.md.

trait Shape {
    fn area(&self) -> f64;
}

struct Square {
    side: f64,
}

struct Circle {
    radius: f64,
}

impl Shape for Square {
    #[inline(never)]
    fn area(&self) -> f64 {
        self.side * self.side
    }
}

impl Shape for Circle {
    #[inline(never)]
    fn area(&self) -> f64 {
        3.14159 * self.radius * self.radius
    }
}

mod geometry {
    #[inline(never)]
    pub fn sum_of_squares(n: u64) -> u64 {
        (0..n).map(|i| i * i).sum()
    }

    #[inline(never)]
    pub fn never_called(x: u64) -> u64 {
        x.wrapping_mul(31).rotate_left(7)
    }
}

#[inline(never)]
fn total_area(shapes: &[Box<dyn Shape>]) -> f64 {
    shapes.iter().map(|s| s.area()).sum()
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let shapes: Vec<Box<dyn Shape>> = vec![Box::new(Square { side: 2.0 })];
    println!("{} {:.2}", geometry::sum_of_squares(n), total_area(&shapes));
    if std::env::args().count() > 2 {
        println!("{}", geometry::never_called(n));
        println!("{}", Circle { radius: 1.0 }.area());
    }
}
