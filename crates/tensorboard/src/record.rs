//! TFRecord framing: each record is its length (u64, little-endian), the masked CRC-32C of
//! those 8 bytes, the data, and the masked CRC-32C of the data.

use std::io::{self, Read, Write};

/// TFRecord's CRC mask: rotate right by 15 and add a constant, so that a CRC of data holding
/// CRCs is not trivially related to them.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

pub fn write_record(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())
}

/// The largest record read back (an event with one image is well under it).
const MAX_RECORD: u64 = 1 << 30;

/// Every record in `bytes`, with both CRCs checked; a record cut short at the end (a run killed
/// while writing) ends the list without an error, as TensorBoard's reader treats it.
pub fn read_records(mut bytes: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let mut header = [0u8; 12];
        if bytes.read_exact(&mut header).is_err() {
            break;
        }
        let len_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
        let crc = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
        if masked_crc(&len_bytes) != crc {
            return Err(bad("a record's length fails its CRC"));
        }
        let len = u64::from_le_bytes(len_bytes);
        if len > MAX_RECORD {
            return Err(bad("a record claims more than 1 GiB"));
        }
        if (bytes.len() as u64) < len + 4 {
            break;
        }
        let (data, rest) = bytes.split_at(len as usize);
        let crc = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if masked_crc(data) != crc {
            return Err(bad("a record's data fails its CRC"));
        }
        records.push(data.to_vec());
        bytes = &rest[4..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_flipped_bit_is_caught() {
        let mut out = Vec::new();
        write_record(&mut out, b"hello").unwrap();
        write_record(&mut out, b"").unwrap();
        assert_eq!(read_records(&out).unwrap(), vec![b"hello".to_vec(), vec![]]);
        // A cut-off record at the end is dropped, not an error.
        assert_eq!(read_records(&out[..out.len() - 2]).unwrap().len(), 1);
        let mut bad = out.clone();
        bad[13] ^= 1;
        assert!(read_records(&bad).is_err());
    }

    #[test]
    fn the_mask_is_tfrecord_s() {
        // CRC-32C's check value for "123456789" is 0xE3069283; TFRecord's mask of it
        // (rotate right 15, add 0xa282ead8), worked out by hand.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }
}
