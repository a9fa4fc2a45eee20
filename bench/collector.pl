#!/usr/bin/perl

# Writes the full status of a Collector under the OpAMP supervisor
# (t/lib/OpAMPCollector.pm, ~40 KB) as loadgen templates:
#   bench/collector.pl DIR BUILDS CONFIGS
# makes DIR/collector-<b>-<c>.pb for each build and config, encoded with
# protoc, the uid a placeholder and sequence_num 1 (loadgen patches both),
# and prints their paths comma-separated for loadgen --full.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use OpAMPCollector;
use OpAMPFleet;

my ($dir, $builds, $configs) = @ARGV;
die "usage: $0 DIR BUILDS CONFIGS\n" unless $dir && $builds && $configs;
mkdir $dir;

my @files;
my $host = 0;
for my $b (1 .. $builds) {
    for my $c (1 .. $configs) {
        my $text = OpAMPCollector::full_status(
            uid => $OpAMPFleet::PLACEHOLDER, seq => 1, build => $b,
            config => $c, host => 'bench-host-' . ++$host);
        my $bytes = OpAMPFleet::encode('AgentToServer', $text);
        my $f = "$dir/collector-$b-$c.pb";
        open my $h, '>:raw', $f or die "$f: $!\n";
        print $h $bytes;
        close $h;
        push @files, $f;
    }
}
print join(',', @files), "\n";
