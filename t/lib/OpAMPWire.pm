package OpAMPWire;

# Protobuf wire bytes written by hand, for the tests that send what protoc
# refuses to encode (fields repeated tens of thousands of times, hostile
# nesting, wrong wire types): a codec independent of the module's.
#
#   vint($n)          a varint
#   fld($n, $bytes)   field $n, length-delimited
#   fvar($n, $v)      field $n, varint
#   kv($key, $any)    a KeyValue of an encoded AnyValue

use strict;
use warnings;
use Exporter 'import';

our @EXPORT = qw(vint fld fvar kv);

sub vint {
    my ($n) = @_;
    my $o = '';
    while ($n >= 0x80) {
        $o .= chr(($n & 0x7f) | 0x80);
        $n >>= 7;
    }
    return $o . chr($n);
}

sub fld  { my ($n, $b) = @_; return vint($n << 3 | 2) . vint(length $b) . $b }
sub fvar { my ($n, $v) = @_; return vint($n << 3) . vint($v) }
sub kv   { my ($k, $any) = @_; return fld(1, $k) . fld(2, $any) }

1;
