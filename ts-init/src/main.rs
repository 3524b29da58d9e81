fn main() {
    eprintln!("ts-init: not built yet");
    std::process::exit(1);
}
