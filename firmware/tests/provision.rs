//! The provisioning record: what a host tool writes at the record's flash offset is what the device
//! reads back, through `embedded-storage`'s `ReadNorFlash`; erased, foreign and torn records are told
//! apart.

use embedded_storage::nor_flash::{ErrorType, NorFlashErrorKind, ReadNorFlash};
use grove_firmware::provision::{self, Login, Record, RecordError, TlsIdentity, MAX_RECORD};

/// A NOR flash in memory that, like many, reads only whole words at aligned offsets.
struct Flash(Vec<u8>);

impl ErrorType for Flash {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for Flash {
    const READ_SIZE: usize = 4;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let offset = offset as usize;
        if !offset.is_multiple_of(Self::READ_SIZE) || !bytes.len().is_multiple_of(Self::READ_SIZE) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        let source = self
            .0
            .get(offset..offset + bytes.len())
            .ok_or(NorFlashErrorKind::OutOfBounds)?;
        bytes.copy_from_slice(source);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.0.len()
    }
}

const RECORD: Record<'static> = Record {
    thing: "sensor-1",
    login: Some(Login {
        username: "sensor-1",
        password: b"s3cret",
    }),
    tls: Some(TlsIdentity {
        server_name: "gw.local",
        ca: &[0x30, 0x82, 0x01, 0x00],
        client: Some((&[0x30, 0x82, 0x02, 0x00], &[7; 32])),
    }),
};

/// A 16 KiB erased flash with `record` written at `offset`.
fn flash_with(record: &Record<'_>, offset: usize) -> Flash {
    let mut image = vec![0xff; 16 * 1024];
    let mut buf = [0u8; MAX_RECORD];
    let len = provision::encode(record, &mut buf).unwrap();
    image[offset..offset + len].copy_from_slice(&buf[..len]);
    Flash(image)
}

#[test]
fn a_written_record_reads_back_from_flash() {
    let minimal = Record {
        thing: "t",
        login: None,
        tls: None,
    };
    for record in [RECORD, minimal] {
        // At the end of the flash too, where less than a whole buffer is left to read.
        for offset in [0, 4096, 16 * 1024 - 128] {
            let mut flash = flash_with(&record, offset);
            let mut buf = [0u8; MAX_RECORD];
            let read = provision::read(&mut flash, offset as u32, &mut buf);
            assert_eq!(read, Ok(record), "at {offset}");
        }
    }
    let login = RECORD.login.unwrap().credentials().unwrap();
    assert_eq!(login.username(), "sensor-1");
}

#[test]
fn erased_foreign_and_torn_records_are_refused() {
    let mut buf = [0u8; MAX_RECORD];
    let len = provision::encode(&RECORD, &mut buf).unwrap();
    let record = &buf[..len];
    assert_eq!(&record[..4], b"GRV1");

    assert_eq!(provision::decode(&[0xff; 64]), Err(RecordError::Empty));
    assert_eq!(
        provision::decode(b"GRV2rest"),
        Err(RecordError::UnknownFormat)
    );
    assert_eq!(provision::decode(b"GR"), Err(RecordError::UnknownFormat));
    // Any one flipped bit after the magic (a torn or decayed write) fails the CRC or the parse.
    for bit in 32..record.len() * 8 {
        let mut torn = record.to_vec();
        torn[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            provision::decode(&torn),
            Err(RecordError::Corrupt),
            "bit {bit}"
        );
    }
    // Cut short (a write that stopped), the rest of the sector still erased.
    let mut cut = record[..len - 10].to_vec();
    cut.resize(len, 0xff);
    assert_eq!(provision::decode(&cut), Err(RecordError::Corrupt));

    // A flash read outside the device's flash is the storage's error.
    let mut flash = Flash(vec![0xff; 1024]);
    assert_eq!(
        provision::read(&mut flash, 4096, &mut buf),
        Err(RecordError::Storage(NorFlashErrorKind::OutOfBounds))
    );
}

#[test]
fn a_record_larger_than_the_limit_is_refused() {
    let ca = vec![0x30; MAX_RECORD];
    let record = Record {
        tls: Some(TlsIdentity {
            server_name: "gw.local",
            ca: &ca,
            client: None,
        }),
        ..RECORD
    };
    let mut buf = vec![0u8; 2 * MAX_RECORD];
    assert_eq!(
        provision::encode(&record, &mut buf),
        Err(RecordError::TooLarge)
    );
    assert_eq!(
        provision::encode(&RECORD, &mut [0u8; 16]),
        Err(RecordError::TooLarge)
    );
}
