use clothesline_preprocessor::imaging::{ImageSpec, preprocess_image_timed, decode_rgb8, resize::resize_raw};
fn cpu() -> f64 { std::fs::read_to_string("/proc/thread-self/schedstat").unwrap().split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9 }
fn main() {
    let dir = std::path::Path::new("/work/shared/datasets/clothing-dataset-small/validation");
    let mut imgs = vec![];
    for c in std::fs::read_dir(dir).unwrap() { for f in std::fs::read_dir(c.unwrap().path()).unwrap() { imgs.push(std::fs::read(f.unwrap().path()).unwrap()); } }
    let spec = ImageSpec::new(224, 224);
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n = imgs.len() as f64;
    let decoded: Vec<_> = imgs.iter().map(|b| decode_rgb8(b, &spec).unwrap().0).collect();
    use fast_image_resize::{images::{Image, ImageRef}, PixelType, ResizeOptions, ResizeAlg, FilterType, Resizer};
    let rgbx: Vec<(Vec<u8>, u32, u32)> = decoded.iter().map(|d| (d.as_raw().chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(), d.width(), d.height())).collect();
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    let mut resizer = Resizer::new();
    // identical?
    for ((x, w, h), d) in rgbx.iter().zip(&decoded) {
        let src = ImageRef::new(*w, *h, x, PixelType::U8x4).unwrap();
        let mut dst = Image::new(224, 224, PixelType::U8x4);
        resizer.resize(&src, &mut dst, &opts).unwrap();
        let four: Vec<u8> = dst.buffer().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        assert_eq!(four, resize_raw(d.as_raw(), d.width(), d.height(), 224, 224).unwrap());
    }
    println!("U8x4 == U8x3");
    for _ in 0..5 {
        let t = cpu();
        match mode.as_str() {
            "decode" => for b in &imgs { std::hint::black_box(decode_rgb8(b, &spec).unwrap()); },
            "turbo" => for b in &imgs { std::hint::black_box(clothesline_preprocessor::imaging::turbo::decode(b, None, |_, _| Ok(()), |p| Ok(p.width)).unwrap()); },
            "turbo_reuse" => { let mut d = turbojpeg::Decompressor::new().unwrap(); let mut buf = vec![0u8; 2000*2000*3]; for b in &imgs { let h = d.read_header(b).unwrap(); let img = turbojpeg::Image { pixels: &mut buf[..h.width*h.height*3], width: h.width, pitch: h.width*3, height: h.height, format: turbojpeg::PixelFormat::RGB }; d.decompress(b, img).unwrap(); } },
            "resize_reuse" => { let mut dst = Image::new(224, 224, PixelType::U8x3); for d in &decoded { let src = ImageRef::new(d.width(), d.height(), d.as_raw(), PixelType::U8x3).unwrap(); resizer.resize(&src, &mut dst, &opts).unwrap(); } },
            "scan" => for b in &imgs { std::hint::black_box(clothesline_preprocessor::imaging::jpeg::scan(b).unwrap()); },
            "sniff" => for b in &imgs { std::hint::black_box(clothesline_preprocessor::imaging::sniff_format(b).unwrap()); },
            "resize4" => for (x, w, h) in &rgbx { let src = ImageRef::new(*w, *h, x, PixelType::U8x4).unwrap(); let mut dst = Image::new(224, 224, PixelType::U8x4); resizer.resize(&src, &mut dst, &opts).unwrap(); std::hint::black_box(dst); },
            "resize" => for d in &decoded { std::hint::black_box(resize_raw(d.as_raw(), d.width(), d.height(), 224, 224).unwrap()); },
            _ => for b in &imgs { std::hint::black_box(preprocess_image_timed(b, &spec).unwrap()); },
        }
        let s = cpu() - t;
        println!("{mode}: {:.3} ms cpu per image, {:.0}/s per core", s * 1e3 / n, n / s);
    }
}
