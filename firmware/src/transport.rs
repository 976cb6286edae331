//! Thin shells over `embedded-io` and `embedded-io-async`: they move bytes between a transport and a
//! [`Device`] and run its timers.
//!
//! - [`poll`], blocking: runs on a board (UART to a network co-processor in transparent mode), on the
//!   host over `std` TCP (feature `std`, `StdTcp`) and in tests over a scripted transport. It never
//!   blocks on reads: it asks [`ReadReady`] first, so the caller's loop keeps the device's timers
//!   running.
//! - [`asynch`] (feature `async`): [`asynch::transmit`] and [`asynch::wait`] over `embedded-io-async`,
//!   for an async executor (embassy on a board, tokio in the simulator through
//!   `embedded-io-adapters`, a scripted transport in tests). A task parks in [`asynch::wait`] until
//!   bytes arrive or the device's next timer is due, so a thousand devices cost no polling.
//! - [`tls`] (feature `tls`): a TLS 1.3 session (embedded-tls) over any `embedded-io-async` socket,
//!   which the async shell drives like a plain one.

use embedded_io::{Read, ReadReady, Write};

use crate::actuator::Actuator;
use crate::device::Device;
use crate::time::Instant;

/// A transport failure, with the transport's own error.
#[derive(Debug, thiserror::Error)]
pub enum TransportError<E: core::fmt::Debug> {
    /// Reading, writing or flushing failed.
    #[error("transport I/O error: {0:?}")]
    Io(E),
    /// The peer closed the connection.
    #[error("transport closed by peer")]
    Closed,
}

/// One step of the shell: read what is ready, run expired timers, write what the device produced.
///
/// `scratch` bounds how much is read or written per call; 64 to 256 bytes is plenty. On error the
/// device has already been told ([`Device::transport_closed`]); the caller closes the transport and
/// waits for [`crate::Event::OpenTransport`].
pub fn poll<T, A>(
    device: &mut Device<A>,
    io: &mut T,
    now: Instant,
    scratch: &mut [u8],
) -> Result<(), TransportError<T::Error>>
where
    T: Read + Write + ReadReady,
    A: Actuator,
{
    let result = step(device, io, now, scratch);
    if result.is_err() {
        device.transport_closed(now);
    }
    result
}

fn step<T, A>(
    device: &mut Device<A>,
    io: &mut T,
    now: Instant,
    scratch: &mut [u8],
) -> Result<(), TransportError<T::Error>>
where
    T: Read + Write + ReadReady,
    A: Actuator,
{
    if io.read_ready().map_err(TransportError::Io)? {
        match io.read(scratch).map_err(TransportError::Io)? {
            0 => return Err(TransportError::Closed),
            n => device.handle_input(&scratch[..n], now),
        }
    }
    if now >= device.poll_timeout() {
        device.handle_timeout(now);
    }
    let mut wrote = false;
    while let Some(n) = device.poll_transmit(scratch) {
        io.write_all(&scratch[..n]).map_err(TransportError::Io)?;
        wrote = true;
    }
    if wrote {
        io.flush().map_err(TransportError::Io)?;
    }
    Ok(())
}

/// A `std` TCP stream as an `embedded-io` transport, for the simulator and host tools.
#[cfg(feature = "std")]
pub struct StdTcp(pub std::net::TcpStream);

#[cfg(feature = "std")]
mod std_tcp {
    use super::StdTcp;
    use std::io::{ErrorKind, Read as _, Write as _};

    impl embedded_io::ErrorType for StdTcp {
        type Error = std::io::Error;
    }

    impl embedded_io::Read for StdTcp {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            self.0.read(buf)
        }
    }

    impl embedded_io::ReadReady for StdTcp {
        /// Peeks without blocking: data or end-of-stream both mean a read will not block.
        fn read_ready(&mut self) -> Result<bool, Self::Error> {
            self.0.set_nonblocking(true)?;
            let peeked = self.0.peek(&mut [0u8; 1]);
            self.0.set_nonblocking(false)?;
            match peeked {
                Ok(_) => Ok(true),
                Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(false),
                Err(error) => Err(error),
            }
        }
    }

    impl embedded_io::Write for StdTcp {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.0.write(buf)
        }

        fn flush(&mut self) -> Result<(), Self::Error> {
            self.0.flush()
        }
    }
}

#[cfg(feature = "tls")]
pub mod tls;

/// The async shell (feature `async`): the same steps as [`poll`], over `embedded-io-async`.
///
/// A shell's loop is: act on [`Device::poll_event`], [`transmit`], then [`wait`]. `wait` takes the
/// executor's sleep as a closure, so the module depends on no executor.
#[cfg(feature = "async")]
pub mod asynch {
    use core::future::Future;
    use core::pin::pin;

    use embassy_futures::select::{select, Either};
    use embedded_io_async::{Read, Write};

    use super::TransportError;
    use crate::actuator::Actuator;
    use crate::device::Device;
    use crate::time::Instant;

    /// Writes and flushes everything the device has queued, `scratch` bytes at a time.
    ///
    /// On error the device has already been told ([`Device::transport_closed`] at `now`); the caller
    /// drops the transport and waits for [`crate::Event::OpenTransport`].
    pub async fn transmit<T, A>(
        device: &mut Device<A>,
        io: &mut T,
        now: Instant,
        scratch: &mut [u8],
    ) -> Result<(), TransportError<T::Error>>
    where
        T: Write,
        A: Actuator,
    {
        let mut wrote = false;
        let mut result = Ok(());
        while let Some(n) = device.poll_transmit(scratch) {
            result = io.write_all(&scratch[..n]).await;
            wrote = true;
            if result.is_err() {
                break;
            }
        }
        if wrote && result.is_ok() {
            result = io.flush().await;
        }
        result.map_err(|error| {
            device.transport_closed(now);
            TransportError::Io(error)
        })
    }

    /// Waits for whichever comes first, bytes from `io` or the device's next timer
    /// ([`Device::poll_timeout`]), and hands it to the device. Without a transport (`None`) it waits
    /// for the timer only.
    ///
    /// `sleep_until` is the executor's sleep until an instant of the device's clock; `clock` reads that
    /// clock after waking. Cancelling the returned future loses nothing as long as `io.read` is
    /// cancel-safe (tokio's and embassy-net's are): received bytes reach the device in the same poll
    /// that reads them. On a read error or end of stream the device has already been told, as in
    /// [`transmit`].
    pub async fn wait<T, A, S, F>(
        device: &mut Device<A>,
        io: Option<&mut T>,
        scratch: &mut [u8],
        sleep_until: S,
        clock: impl Fn() -> Instant,
    ) -> Result<(), TransportError<T::Error>>
    where
        T: Read,
        A: Actuator,
        S: FnMut(Instant) -> F,
        F: Future<Output = ()>,
    {
        wait_interruptible(device, io, scratch, sleep_until, clock, || true).await
    }

    /// [`wait`] for a transport whose read may be dropped only when `interruptible` says so (a TLS
    /// session between records, see `transport::tls`). A timer that fires while it may not is run
    /// at once and the read goes on; what the timer queued is sent by the next [`transmit`], after
    /// the read. If the timer ended the session, the read is dropped regardless: the transport is
    /// about to be closed.
    pub(crate) async fn wait_interruptible<T, A, S, F>(
        device: &mut Device<A>,
        io: Option<&mut T>,
        scratch: &mut [u8],
        mut sleep_until: S,
        clock: impl Fn() -> Instant,
        interruptible: impl Fn() -> bool,
    ) -> Result<(), TransportError<T::Error>>
    where
        T: Read,
        A: Actuator,
        S: FnMut(Instant) -> F,
        F: Future<Output = ()>,
    {
        let Some(io) = io else {
            sleep_until(device.poll_timeout()).await;
            device.handle_timeout(clock());
            return Ok(());
        };
        let read = {
            let mut read = pin!(io.read(scratch));
            loop {
                match select(read.as_mut(), sleep_until(device.poll_timeout())).await {
                    Either::First(read) => break Some(read),
                    Either::Second(()) => {
                        device.handle_timeout(clock());
                        if interruptible() || !device.uses_transport() {
                            break None;
                        }
                    }
                }
            }
        };
        let now = clock();
        let result = match read {
            None => return Ok(()),
            Some(Ok(0)) => Err(TransportError::Closed),
            Some(Ok(n)) => {
                device.handle_input(&scratch[..n], now);
                Ok(())
            }
            Some(Err(error)) => Err(TransportError::Io(error)),
        };
        if result.is_err() {
            device.transport_closed(now);
        }
        result
    }
}

#[cfg(all(test, feature = "async"))]
mod tests {
    use core::cell::Cell;
    use core::convert::Infallible;
    use core::future::poll_fn;
    use core::task::Poll;

    use super::asynch::wait_interruptible;
    use crate::actuator::Actuator;
    use crate::device::{Config, Device, Event};
    use crate::mqtt::{ConnectReturnCode, Packet};
    use crate::time::Instant;

    struct Off;

    impl Actuator for Off {
        type Error = Infallible;

        fn set(&mut self, _on: bool) -> Result<(), Infallible> {
            Ok(())
        }
    }

    /// A socket whose read is pending on its first poll and then returns a CONNACK: bytes that are
    /// still arriving when the device's timer fires.
    struct SlowConnack {
        polls: u32,
    }

    impl embedded_io_async::ErrorType for SlowConnack {
        type Error = embedded_io_async::ErrorKind;
    }

    impl embedded_io_async::Read for SlowConnack {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            poll_fn(|cx| {
                self.polls += 1;
                if self.polls == 1 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let connack = Packet::Connack {
                    session_present: false,
                    code: ConnectReturnCode::Accepted,
                };
                Poll::Ready(Ok(connack.encode(buf).expect("fits")))
            })
            .await
        }
    }

    /// Runs one wait on a device awaiting its CONNACK, whose first timer (a sample at 10 s) fires
    /// while the read is pending; returns the socket's polls, the events and whether the CONNACK
    /// reached the device.
    fn wait_with(interruptible: bool) -> (u32, Option<Event>, bool) {
        // An ack timeout beyond the first sample: the timer that fires does not end the session.
        let config = Config::new("t").unwrap().with_timing(30, 20_000).unwrap();
        let mut device = Device::new(config, Off, Instant::from_millis(0));
        while device.poll_event().is_some() {}
        device.transport_opened(Instant::from_millis(0));
        while device.poll_transmit(&mut [0u8; 256]).is_some() {}
        let mut socket = SlowConnack { polls: 0 };
        let clock = Cell::new(0u64);
        // A virtual clock: the sleep, once polled, jumps it to its deadline and completes.
        let sleep_until = |at: Instant| {
            let clock = &clock;
            async move { clock.set(clock.get().max(at.as_millis())) }
        };
        let now = || Instant::from_millis(clock.get());
        let mut scratch = [0u8; 64];
        embassy_futures::block_on(wait_interruptible(
            &mut device,
            Some(&mut socket),
            &mut scratch,
            sleep_until,
            now,
            || interruptible,
        ))
        .unwrap();
        // A SUBSCRIBE waiting to be sent means the CONNACK was handled.
        let subscribed = device.poll_transmit(&mut [0u8; 256]).is_some();
        (socket.polls, device.poll_event(), subscribed)
    }

    #[test]
    fn a_timer_inside_an_uninterruptible_read_runs_and_the_read_goes_on() {
        assert_eq!(wait_with(false), (2, Some(Event::SampleDue), true));
    }

    #[test]
    fn a_timer_drops_an_interruptible_read() {
        assert_eq!(wait_with(true), (1, Some(Event::SampleDue), false));
    }
}
