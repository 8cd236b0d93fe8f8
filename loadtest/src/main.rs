//! Load generator for clothesline. Placeholder until the load-test issue: it says so and exits non-zero.

fn main() {
    eprintln!("clothesline-loadtest is not implemented yet (see the load-test issue)");
    std::process::exit(2);
}
