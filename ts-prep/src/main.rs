fn main() {
    eprintln!("ts-prep: not built yet");
    std::process::exit(1);
}
