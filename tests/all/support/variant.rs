//! Builds of the embedded component that differ only in a custom section:
//! the same code under another digest, for swap tests and benchmarks.

/// `component` with one more custom section named `keybust-variant`
/// holding `tag`.
pub fn variant(component: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"keybust-variant";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section id
    leb(payload.len(), &mut bytes);
    bytes.extend_from_slice(&payload);
    bytes
}
